"""Loading an edit pipeline from what a user points at: a folder, a Hub id or one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

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
) -> InstantPortraitPipeline:
    """A folder or Hub id through ``from_pretrained``; a ``.safetensors``/``.ckpt`` file
    through ``from_single_file`` (with ``config``, a local folder of the same architecture;
    its EMA UNet when it holds one, the non-EMA one with ``use_ema=False``: the loaded copy
    is named in ``pipe.unet_source``); then moved to ``device``/``dtype`` when given."""
    path = Path(str(model)).expanduser()
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES and not path.is_dir():
        pipe = InstantPortraitPipeline.from_single_file(
            path, config=None if config is None else str(config), use_ema=use_ema, **kwargs
        )
    else:
        pipe = InstantPortraitPipeline.from_pretrained(model, **kwargs)
    if device is not None or dtype is not None:
        pipe.to(device=device, dtype=dtype)
    return pipe
