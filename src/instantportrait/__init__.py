"""InstantPortrait: identity-preserving portrait editing and generation with diffusion models.

Heavy submodules (pipelines, faces, training) are imported on first use, so
``import instantportrait`` stays fast and needs no optional dependency.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "InstantPortraitPipeline": "instantportrait.pipelines.edit",
    "load_image": "instantportrait.io",
    "ResolutionPolicy": "instantportrait.io",
    "InputError": "instantportrait.errors",
    "ModelNotFoundError": "instantportrait.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instantportrait' has no attribute {name!r}")
