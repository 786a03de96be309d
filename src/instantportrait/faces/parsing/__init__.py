"""Face parsing: a BiSeNet (face-parsing.PyTorch layout) and M_B, DIIR's face mask, from it.

* :mod:`.bisenet`: the network, parameter names as the released ``79999_iter.pth``.
* :mod:`.parser`: :class:`FaceParser` (the restorer's ``mask_fn``), :func:`load_face_parser`,
  the official preprocessing, the class selection, and the tiny random parser.
"""

from __future__ import annotations

from .bisenet import BiSeNet, config_from_state_dict
from .parser import (
    CELEBAMASK_CLASSES,
    FACE_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FaceParser,
    class_mask,
    load_bisenet,
    load_face_parser,
    preprocess,
    write_tiny_face_parser,
)

__all__ = [
    "BiSeNet",
    "CELEBAMASK_CLASSES",
    "FACE_CLASSES",
    "FaceParser",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "class_mask",
    "config_from_state_dict",
    "load_bisenet",
    "load_face_parser",
    "preprocess",
    "write_tiny_face_parser",
]
