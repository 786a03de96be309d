"""Load an FPGA-family model folder: the ID-ControlNet pipeline or a merged RepControlNet.

Both are saved by diffusers with their class in ``model_index.json``; both take the same
inputs (prompt, condition image, F_id or face images, face-region masks, steps, CFG, ID
scale), so ``generate --method fpga`` and the evaluation harness read the class and load
either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotFoundError

__all__ = ["FPGA_PIPELINES", "load_fpga_family", "pipeline_class"]

#: class name in ``model_index.json`` -> what it is, for messages
FPGA_PIPELINES = {
    "FPGAPipeline": "FPGA ID-ControlNet",
    "RepControlNetPipeline": "merged RepControlNet",
}


def pipeline_class(model: str | os.PathLike, *, name: str = "model") -> str:
    """``FPGAPipeline`` or ``RepControlNetPipeline``: the class ``model`` was saved as.

    ``name`` names the input in the one-line error (e.g. ``--model``).
    """
    model = Path(model)
    index = model / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(
            f"{name} {model}: no FPGA or RepControlNet pipeline folder (model_index.json); "
            "train one with `instantportrait train fpga` / `train repcontrolnet`, or write a "
            "tiny one with `init-tiny --kind fpga` / `--kind repcontrolnet`"
        )
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        cls = None
    if cls not in FPGA_PIPELINES:
        raise ModelNotFoundError(
            f"{name} {model}: a {cls or 'unknown'} folder, not one of {', '.join(FPGA_PIPELINES)}"
        )
    return cls


def load_fpga_family(
    model: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    control_strength: float | None = None,
    name: str = "model",
) -> Any:
    """The FPGA or merged RepControlNet pipeline of ``model`` (progress bars off).

    ``control_strength``: a RepControlNet's beta (re-merged from its saved copies).
    """
    from ..errors import InputError

    cls = pipeline_class(model, name=name)
    if cls == "RepControlNetPipeline":
        from .rep_controlnet import RepControlNetPipeline

        pipe = RepControlNetPipeline.from_pretrained(str(model), dtype=dtype)
        if control_strength is not None:
            pipe.set_control_strength(control_strength)
    else:
        if control_strength is not None:
            raise InputError(f"{name} {model}: control strength is for a RepControlNet model")
        from .fpga import FPGAPipeline

        pipe = FPGAPipeline.from_pretrained(str(model), dtype=dtype)
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
