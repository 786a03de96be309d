"""Face similarity of two images: detect, align and embed the largest face of each, compare.

Lives apart from :mod:`.embedders` and :mod:`.analyzer` because it uses both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .analyzer import FaceAnalyzer
from .base import IdentityEmbedder

__all__ = ["FaceSimilarity", "face_similarity"]


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
