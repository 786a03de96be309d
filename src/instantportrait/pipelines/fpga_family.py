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


#: how to provide an FPGA-family model, in every "not found" line.
FPGA_HOW = (
    "train one with `instantportrait train fpga` / `train repcontrolnet`, or write a tiny one "
    "with `init-tiny --kind fpga` / `--kind repcontrolnet`"
)
_KIND_CLASS = {"fpga": "FPGAPipeline", "repcontrolnet": "RepControlNetPipeline"}


def pipeline_class(model: str | os.PathLike, *, name: str = "model") -> str:
    """``FPGAPipeline`` or ``RepControlNetPipeline``: the class ``model`` was saved as.

    ``model`` is a local folder or a Hub id (from the Hugging Face cache offline); its layout
    is checked from ``model_index.json`` first (:func:`~..model_check.check_model`).
    ``name`` names the input in the one-line error (e.g. ``--model``).
    """
    from ..model_check import check_model

    found = check_model(model, "fpga", name, how=FPGA_HOW)
    if found.kind == "hub":  # online and not cached: read the class from its index
        from huggingface_hub import hf_hub_download

        index = json.loads(Path(hf_hub_download(str(model), "model_index.json")).read_text())
        if index.get("_class_name") not in FPGA_PIPELINES:
            raise ModelNotFoundError(f"{name} {model}: not an FPGA-family pipeline; {FPGA_HOW}")
        return str(index["_class_name"])
    return _KIND_CLASS[found.kind]


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
    from ..model_sources import locate

    cls = pipeline_class(model, name=name)
    where = str(locate(model, name, FPGA_HOW))
    if cls == "RepControlNetPipeline":
        from .rep_controlnet import RepControlNetPipeline

        pipe = RepControlNetPipeline.from_pretrained(where, dtype=dtype)
        if control_strength is not None:
            pipe.set_control_strength(control_strength)
    else:
        if control_strength is not None:
            raise InputError(f"{name} {model}: control strength is for a RepControlNet model")
        from .fpga import FPGAPipeline

        pipe = FPGAPipeline.from_pretrained(where, dtype=dtype)
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
