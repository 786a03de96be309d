"""diffusers' per-call state and step callbacks, shared by our pipelines.

diffusers' pipelines expose, during and after a call, ``guidance_scale``, ``num_timesteps``
and ``do_classifier_free_guidance``, and call ``callback_on_step_end(pipe, step_index,
timestep, callback_kwargs)`` after each step with the tensors named in
``callback_on_step_end_tensor_inputs`` (a subset of ``_callback_tensor_inputs``); tensors the
callback returns replace the pipeline's. diffusers' ready-made callbacks
(``diffusers.callbacks``) rely on this: ``SDCFGCutoffCallback`` keeps the last rows of
``prompt_embeds`` (the conditional text: unconditional rows come first) and sets
``pipe._guidance_scale = 0``, after which the pipeline runs the conditional branch alone.
A ``PipelineCallback`` or ``MultiPipelineCallbacks`` names its own tensor inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InputError

__all__ = ["StepCallback", "StepCallbackMixin", "rows_for"]

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any] | None]


def rows_for(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """``tensor`` with ``n`` rows: as it is, one row broadcast, or its last ``n`` rows (the
    conditional ones, unconditional rows coming first) when a callback turned guidance off."""
    if tensor.shape[0] == n:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(n, *tensor.shape[1:])
    if tensor.shape[0] > n:
        return tensor[-n:]
    raise InputError(f"callback: a tensor of {tensor.shape[0]} rows where {n} are needed")


class StepCallbackMixin:
    """``guidance_scale``, ``do_classifier_free_guidance``, ``num_timesteps`` and the step
    callback, as diffusers' pipelines have them. A pipeline sets ``_guidance_scale`` and
    ``_num_timesteps`` at the start of its call and reads the properties in its loop."""

    #: Tensors a step callback may read and replace (diffusers' name).
    _callback_tensor_inputs: list[str] = ["latents", "prompt_embeds"]

    @property
    def guidance_scale(self) -> float:
        """The text guidance scale of the current (or last) call; callbacks may change it."""
        return float(self.__dict__.get("_guidance_scale", 1.0))

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the unconditional branch runs: ``guidance_scale > 1``."""
        return self.guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the current (or last) call."""
        return int(self.__dict__.get("_num_timesteps", 0))

    def callback_tensor_names(
        self, callback: StepCallback | None, names: Sequence[str] | None
    ) -> list[str]:
        """The tensors to hand ``callback``: its own ``tensor_inputs`` for a diffusers
        ``PipelineCallback``/``MultiPipelineCallbacks``, else ``names``; each must be one
        of :attr:`_callback_tensor_inputs`."""
        if callback is None:
            return []
        if not callable(callback):
            raise InputError(f"callback_on_step_end: a callable, got {type(callback).__name__}")
        own = getattr(callback, "tensor_inputs", None)
        chosen = list(own if isinstance(own, (list, tuple)) else (names or ["latents"]))
        unknown = [n for n in chosen if n not in self._callback_tensor_inputs]
        if unknown:
            raise InputError(
                f"callback_on_step_end_tensor_inputs: {unknown} not offered; this pipeline "
                f"offers {self._callback_tensor_inputs}"
            )
        return chosen

    def run_step_callback(
        self,
        callback: StepCallback | None,
        names: Sequence[str],
        step_index: int,
        timestep: Any,
        tensors: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``tensors`` updated by what ``callback(self, step_index, timestep, kwargs)`` returns
        (``kwargs``: the named tensors)."""
        if callback is None:
            return tensors
        out = callback(self, step_index, timestep, {n: tensors[n] for n in names}) or {}
        return {**tensors, **{k: v for k, v in out.items() if k in tensors}}
