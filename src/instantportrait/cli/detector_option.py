"""The face-detector options every command that finds faces shares: ``--detector``,
``--detector-weights`` (and ``--upsample`` where dlib's upsampling is offered), mapped onto one
:class:`~instantportrait.faces.detectors.FaceDetectorConfig` here, and only here."""

from __future__ import annotations

import argparse
from typing import Any

from ..faces.detectors import DETECTOR_NAMES, FaceDetectorConfig


def add_detector_arguments(p: argparse.ArgumentParser, upsample: bool = False) -> None:
    """Add ``--detector`` and ``--detector-weights`` (and ``--upsample``) to a parser."""
    p.add_argument(
        "--detector",
        choices=DETECTOR_NAMES,
        default=None,
        help="face detector: hog (dlib, default), mmod (dlib CNN), scrfd (insightface's ONNX, "
        "--detector-weights; chosen automatically when --face-model is an insightface model "
        "folder) or mtcnn (facenet-pytorch's weights, shipped)",
    )
    p.add_argument(
        "--detector-weights",
        metavar="FILE",
        help="the detector's model: SCRFD det_10g.onnx (buffalo_l) or scrfd_10g_bnkps.onnx "
        "(antelopev2); optional for mmod/mtcnn",
    )
    if upsample:
        p.add_argument(
            "--upsample", type=int, default=1, help="dlib detector upsampling, 0-4 (default 1)"
        )


def detector_config(args: argparse.Namespace, face_model: Any = None) -> FaceDetectorConfig:
    """The config of the parsed options (validated: a missing model file is one line)."""
    return FaceDetectorConfig.from_options(
        getattr(args, "detector", None),
        getattr(args, "detector_weights", None),
        face_model=face_model,
        upsample=getattr(args, "upsample", 1),
    )
