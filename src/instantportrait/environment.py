"""The environment report for bug reports and results: versions, device, optional parts.

``instantportrait env`` prints it; benchmark and evaluation results store it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

__all__ = ["environment_report"]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> dict[str, str]:
    """What `env` prints, as a dict (also stored with benchmark and evaluation results)."""
    import torch

    from . import __version__

    info: dict[str, str] = {
        "instantportrait": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for dist in (
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "safetensors",
        "numpy",
        "Pillow",
    ):
        info[dist] = _version(dist)
    if torch.cuda.is_available():
        info["device"] = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
        info["cuda"] = str(torch.version.cuda)
    else:
        info["device"] = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    info["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "unset")
    try:
        from .faces import face_stack_status

        info.update(face_stack_status())
    except ImportError:
        info["dlib"] = _version("dlib-bin")
    vocab = importlib.util.find_spec("open_clip")
    info["clip vocabulary (open_clip_torch)"] = (
        "available" if vocab else "missing: pip install --no-deps open_clip_torch"
    )
    extras = {
        "tensorboard": "train",
        "matplotlib": "eval",
        "av": "video",
        "gradio": "app",
    }
    for module, extra in extras.items():
        found = importlib.util.find_spec(module) is not None
        info[module] = "available" if found else f"missing (extra [{extra}])"
    return info
