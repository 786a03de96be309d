"""The face stack: detection, landmarks, alignment, masks, identity embedders, DINOv2 features,
face parsing (BiSeNet).

Two levels (as facenet-pytorch): :class:`FaceAnalyzer` ``.analyze(image)`` returns faces with
aligned crops and embeddings; :func:`detect`, :func:`crop_faces`, :func:`face_masks` and
:func:`get_embedder` are the parts. :class:`FaceDetectorConfig` selects the detector (dlib by
default; SCRFD and MTCNN for the reference pipelines, with :func:`norm_crop`). Names are
imported on first use, so importing this package loads neither dlib nor any network.

``detect`` is the function: the submodule of the same name is imported here, before the name
is bound, so the import system can never replace the function by the module (which happened
when the submodule was first imported after ``from instantportrait.faces import detect``).
The module stays reachable as ``instantportrait.faces.detect`` in import statements
(``from instantportrait.faces.detect import FaceDetections``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import Any

# Import the submodule first (this binds the package attribute to the module), then rebind
# the name to the function: a later `import ...faces.detect` finds the module in sys.modules
# and leaves the attribute alone. detect.py imports dlib only when a detection runs.
from . import detect as _detect_module

detect = _detect_module.detect

_EXPORTS = {
    "IdentityEmbedder": "base",
    "TEMPLATES": "align",
    "AlignmentTemplate": "align",
    "crop_faces": "align",
    "estimate_similarity": "align",
    "to_grayscale": "align",
    "FaceDetections": "detect",
    "FaceDetectorConfig": "detectors",
    "norm_crop": "align",
    "NoFaceFoundError": "detect",
    "detect_landmarks": "detect",
    "FACE_PARTS": "masks",
    "face_mask": "masks",
    "face_masks": "masks",
    "FaceSimilarity": "similarity",
    "face_similarity": "similarity",
    "get_embedder": "embedders",
    "Face": "analyzer",
    "FaceAnalyzer": "analyzer",
    "FaceNetEmbedder": "facenet",
    "InceptionResnetV1": "facenet",
    "ArcFaceEmbedder": "arcface",
    "ArcFaceOnnxEmbedder": "arcface",
    "IResNet": "arcface",
    "DinoFeatureExtractor": "dino",
    "DlibResNetEmbedder": "dlib_resnet",
    "BiSeNet": "parsing",
    "FaceParser": "parsing",
    "load_face_parser": "parsing",
}

__all__ = sorted([*_EXPORTS, "detect", "face_stack_status"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def face_stack_status() -> dict[str, str]:
    """Which face models are available, for ``instantportrait env``: name -> status line."""
    from ..errors import MissingDependencyError
    from .model_files import DLIB_MODEL_FILES, dlib_model_path, has_dlib

    info: dict[str, str] = {}
    if has_dlib():
        try:
            version = importlib.metadata.version("dlib-bin")
        except importlib.metadata.PackageNotFoundError:
            version = "installed"
        info["dlib"] = f"{version} (available)"
    else:
        info["dlib"] = "missing (extra [face]: dlib-bin)"
    for kind, filename in DLIB_MODEL_FILES.items():
        if filename is None:
            continue
        try:
            info[f"dlib model {kind}"] = f"available ({dlib_model_path(kind)})"
        except MissingDependencyError as exc:
            info[f"dlib model {kind}"] = f"missing ({exc})"
    found = importlib.util.find_spec("onnxruntime") is not None
    info["onnxruntime (ArcFace, SCRFD ONNX)"] = "available" if found else "missing (extra [onnx])"
    from .mtcnn import MTCNN_WEIGHTS

    info["MTCNN weights (facenet-pytorch, MIT)"] = (
        f"available ({MTCNN_WEIGHTS})" if MTCNN_WEIGHTS.is_file() else "missing (reinstall)"
    )
    return info
