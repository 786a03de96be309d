"""The metric registry and the metrics, one module per family.

* :mod:`.registry`: :class:`Metric`, :class:`ModelSource`, :class:`ModelHub`,
  :func:`register_metric`, :func:`register_model`, :func:`resolve_metric_names`.
* :mod:`.context`: :class:`ItemContext` (what an item metric sees) and the face matchers.
* :mod:`.identity`: face similarity (dlib, FaceNet, ArcFace) and FFC.
* :mod:`.clip`: CLIP-T, CLIP-I, FSC (two variants), HPS v2.
* :mod:`.fastface`: FSC with FastFace's official pixel scaling (``fsc_official``).
* :mod:`.dino`: DINO (v1) similarity.
* :mod:`.perceptual`: LPIPS and Intra-LPIPS.
* :mod:`.fid`: FID and FD-DINOv2.
* :mod:`.quality`: Q-Align, ImageReward, LAION aesthetic.
* :mod:`.cost`: model size and inference steps.

Register a new metric with :func:`register_metric` (and a new model with
:func:`register_model`) in a module of its family; the runner, the store and the report pick
it up by name.
"""

from __future__ import annotations

from . import clip, cost, dino, fastface, fid, identity, perceptual, quality, regions  # noqa: F401
from .context import FACE_MATCHERS, ItemContext, register_face_matcher
from .registry import (
    METRICS,
    MODELS,
    OFFLINE_METRICS,
    TABLE1_ORDER,
    Metric,
    MetricUnavailable,
    ModelHub,
    ModelSource,
    NotApplicable,
    metric_key,
    ordered,
    register_metric,
    register_model,
    resolve_metric_names,
)

__all__ = [
    "FACE_MATCHERS",
    "METRICS",
    "MODELS",
    "OFFLINE_METRICS",
    "TABLE1_ORDER",
    "ItemContext",
    "Metric",
    "MetricUnavailable",
    "ModelHub",
    "ModelSource",
    "NotApplicable",
    "metric_key",
    "ordered",
    "register_face_matcher",
    "register_metric",
    "register_model",
    "resolve_metric_names",
]
