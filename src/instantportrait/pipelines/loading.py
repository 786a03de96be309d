"""Loading an edit pipeline from what a user points at: a folder, a Hub id or one file.

This is the one place that tells the editors apart: a FLUX.1 Kontext folder (its
``model_index.json`` names ``FluxKontextPipeline``, or ``KontextEditPipeline`` for an exported
one-step student) loads as :class:`~.kontext_edit.KontextEditPipeline`, a Qwen-Image-Edit folder
(``QwenImageEditPipeline``) as :class:`~.qwen_edit.QwenEditPipeline`; everything else as the
InstructPix2Pix-format :class:`~.edit.InstantPortraitPipeline`. A Hub id whose cached snapshot
is such a folder counts as one. The CLI's ``edit``, the app's Edit tab, the ComfyUI loader node
and the evaluation harness's ``edit`` method all load here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..backbones import dit_editor_folder
from ..errors import InputError, ModelNotFoundError
from .edit import InstantPortraitPipeline

#: Suffixes read as single-file checkpoints (``from_single_file``).
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def load_edit_pipeline(
    model: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    use_ema: bool = True,
    **kwargs: Any,
) -> Any:
    """A FLUX.1 Kontext folder as ``KontextEditPipeline``, a Qwen-Image-Edit folder as
    ``QwenEditPipeline`` (see the module doc); otherwise an
    ``InstantPortraitPipeline``: a folder or Hub id through ``from_pretrained``; a
    ``.safetensors``/``.ckpt`` file through ``from_single_file`` (with ``config``, a local
    folder of the same architecture; its EMA UNet when it holds one, the non-EMA one with
    ``use_ema=False``: the loaded copy is named in ``pipe.unet_source``); then moved to
    ``device``/``dtype`` when given."""
    path = Path(str(model)).expanduser()
    dit = dit_editor_folder(model)
    if dit is not None:
        family, folder = dit
        if config is not None:
            raise InputError(f"{model}: a {family} folder takes no --config")
        return _load_dit(folder, family, device=device, dtype=dtype, **kwargs)
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES and not path.is_dir():
        pipe = InstantPortraitPipeline.from_single_file(
            path, config=None if config is None else str(config), use_ema=use_ema, **kwargs
        )
    else:
        pipe = InstantPortraitPipeline.from_pretrained(model, **kwargs)
    if device is not None or dtype is not None:
        pipe.to(device=device, dtype=dtype)
    return pipe


def _load_dit(
    path: Path,
    family: str,
    *,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    **kwargs: Any,
) -> Any:
    """A DiT editor's folder (``family``: ``FLUX.1 Kontext`` or ``Qwen-Image-Edit``) as its
    pipeline; a broken folder is one line."""
    if family == "Qwen-Image-Edit":
        from .qwen_edit import QwenEditPipeline as cls
    else:
        from .kontext_edit import KontextEditPipeline as cls

    try:
        pipe = cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{path}: could not load the {family} folder: {first[:200]}"
        ) from exc
    if device is not None or dtype is not None:
        pipe.to(device=device, dtype=dtype)
    return pipe
