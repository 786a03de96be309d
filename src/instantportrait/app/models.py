"""The app's models: loaded once, lazily, from the folders or Hub ids given at start-up.

The app starts with no model loaded. The first request of a method loads its pipeline (under
a lock, so a burst of first requests loads it once); a method with no model given says which
option provides it. Nothing here imports Gradio, so the ComfyUI nodes and tests share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError


@dataclass
class ModelSlot:
    """One method's model: where it comes from, how it loads, and the loaded object."""

    method: str
    option: str
    source: str | None
    loader: Callable[[str, torch.device, torch.dtype], Any]
    _model: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def configured(self) -> bool:
        return self.source is not None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self, device: torch.device, dtype: torch.dtype) -> Any:
        """The model, loading it on first use; no source is one line naming the option."""
        if self.source is None:
            raise InputError(
                f"{self.method}: no model was given; restart the app with {self.option} PATH"
            )
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self.loader(self.source, device, dtype)
        return self._model


def load_edit_pipeline(source: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The InstantPortrait editor (a folder, Hub id or single ``.safetensors`` file) on
    ``device``, its progress bar off (the app shows its own state)."""
    from ..pipelines import load_edit_pipeline as load

    pipe = load(source, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ModelRegistry:
    """The models of every method the app offers, keyed by method name."""

    def __init__(
        self,
        *,
        edit_model: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.slots: dict[str, ModelSlot] = {
            "edit": ModelSlot("edit", "--edit-model", edit_model, load_edit_pipeline),
        }

    def get(self, method: str) -> Any:
        return self.slots[method].get(self.device, self.dtype)

    def status(self) -> dict[str, str]:
        """method -> a short line for the UI: loaded, given (loads on first use), or missing."""
        lines = {}
        for name, slot in self.slots.items():
            if slot.loaded:
                lines[name] = f"loaded from {slot.source}"
            elif slot.configured:
                lines[name] = f"{slot.source} (loads on first use)"
            else:
                lines[name] = f"no model: start the app with {slot.option} PATH"
        return lines
