"""Which face detector runs, and where its five points come from: one object passed through.

:class:`FaceDetectorConfig` names the detector and its options once; :func:`~.detect.detect`,
:class:`~.analyzer.FaceAnalyzer`, the FaceID encoder, the identity metrics and the trainers take
it, and the command line maps ``--detector``, ``--detector-weights``, ``--upsample`` and
``--face-model`` onto it in one place (:meth:`FaceDetectorConfig.from_options`).

Detectors (``name``):

* ``"hog"`` (default) / ``"mmod"``: dlib (offline, permissive). The five reference points
  (eye centres, nose tip, mouth corners) are derived from dlib's 68 landmarks.
* ``"scrfd"``: insightface's SCRFD ONNX (``det_10g.onnx`` of buffalo_l,
  ``scrfd_10g_bnkps.onnx`` of antelopev2; user-supplied, ``weights``): the detector and points
  behind insightface's embeddings (FaceID, the ArcFace numbers of the papers).
* ``"mtcnn"``: MTCNN with facenet-pytorch's published P/R/O-Net weights (shipped with the
  package): the detector, points and crops behind FaceNet's numbers.

An insightface model folder (``--face-model buffalo_l/``) holds the recogniser and its
detector together; :meth:`FaceDetectorConfig.from_options` then selects SCRFD automatically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError, ModelNotFoundError

__all__ = [
    "DETECTOR_NAMES",
    "INSIGHTFACE_DETECTORS",
    "INSIGHTFACE_RECOGNISERS",
    "FaceDetectorConfig",
    "insightface_pack",
]

DETECTOR_NAMES = ("hog", "mmod", "scrfd", "mtcnn")
#: SCRFD files of insightface's model packs (buffalo_l, antelopev2), in preference order.
INSIGHTFACE_DETECTORS = ("det_10g.onnx", "scrfd_10g_bnkps.onnx")
#: ArcFace files of the same packs.
INSIGHTFACE_RECOGNISERS = ("w600k_r50.onnx", "glintr100.onnx")


def insightface_pack(folder: str | os.PathLike) -> tuple[Path | None, Path | None]:
    """The SCRFD and the ArcFace file of an insightface model folder (``None`` if absent)."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        return None, None
    det = next((p / n for n in INSIGHTFACE_DETECTORS if (p / n).is_file()), None)
    rec = next((p / n for n in INSIGHTFACE_RECOGNISERS if (p / n).is_file()), None)
    return det, rec


@dataclass(frozen=True)
class FaceDetectorConfig:
    """The face detector and its options.

    Attributes:
        name: ``"hog"`` (default), ``"mmod"``, ``"scrfd"`` or ``"mtcnn"`` (module docstring).
        weights: the model file: required for ``scrfd`` (its ``.onnx``); optional for
            ``mmod`` (dlib's ``.dat``) and ``mtcnn`` (a safetensors of P/R/O-Net, default the
            shipped one); unused for ``hog``.
        upsample: dlib's upsampling (0-4, default 1); unused by SCRFD and MTCNN.
        threshold: the score threshold (default: the detector's own: HOG 0.3, MMOD 0,
            SCRFD 0.5, MTCNN's last stage 0.7).
        det_size: SCRFD's square detection canvas (default 640, the papers').
        min_face: MTCNN's smallest face in pixels (default 20, facenet-pytorch's).
    """

    name: str = "hog"
    weights: Path | None = None
    upsample: int = 1
    threshold: float | None = None
    det_size: int = 640
    min_face: int = 20

    def __post_init__(self) -> None:
        if self.name not in DETECTOR_NAMES:
            raise InputError(f"detector: one of {', '.join(DETECTOR_NAMES)}; got {self.name!r}")
        if not 0 <= int(self.upsample) <= 4:
            raise InputError(f"upsample: between 0 and 4, got {self.upsample}")
        if self.det_size < 32 or self.det_size % 32:
            raise InputError(f"det_size: a multiple of 32, got {self.det_size}")
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights).expanduser())
        if self.name == "scrfd" and self.weights is None:
            raise ModelNotFoundError(
                "detector scrfd: no model given; pass --detector-weights with insightface's "
                "det_10g.onnx (buffalo_l) or scrfd_10g_bnkps.onnx (antelopev2), or "
                "--face-model with the model folder"
            )
        if self.weights is not None and not self.weights.is_file():
            raise ModelNotFoundError(f"{self.weights}: {self.name} detector model not found")
        if self.name == "hog" and self.weights is not None:
            raise InputError("detector hog: takes no weights (it is built into dlib)")

    @classmethod
    def from_options(
        cls,
        detector: str | FaceDetectorConfig | None = None,
        weights: str | os.PathLike | None = None,
        face_model: str | os.PathLike | None = None,
        upsample: int = 1,
        threshold: float | None = None,
    ) -> FaceDetectorConfig:
        """The config from command-line style options.

        ``detector=None`` means: SCRFD when ``face_model`` is an insightface model folder
        holding a detector (``det_10g.onnx`` / ``scrfd_10g_bnkps.onnx``), or a recogniser file
        of one (``w600k_r50.onnx`` / ``glintr100.onnx`` beside its detector), else ``"hog"``.
        ``detector="scrfd"`` without ``weights`` also takes the folder's detector.
        """
        if isinstance(detector, FaceDetectorConfig):
            return detector
        pack_detector = None
        if face_model is not None:
            folder = Path(face_model).expanduser()
            if folder.name in INSIGHTFACE_RECOGNISERS:
                folder = folder.parent
            pack_detector = insightface_pack(folder)[0]
        if detector is None:
            detector = "scrfd" if pack_detector is not None and weights is None else "hog"
        if detector == "scrfd" and weights is None:
            weights = pack_detector
        return cls(
            name=detector,
            weights=None if weights is None else Path(weights),
            upsample=upsample,
            threshold=threshold,
        )

    @classmethod
    def from_spec(cls, spec: str | FaceDetectorConfig | None) -> FaceDetectorConfig:
        """The config from one string (config files, ``--weights face-detector=SPEC``):
        ``hog``, ``mmod``, ``mmod:FILE.dat``, ``mtcnn``, ``mtcnn:FILE.safetensors``,
        ``scrfd:FILE.onnx``, a bare ``.onnx`` file (SCRFD) or an insightface model folder.
        ``None`` or ``""`` is ``hog``."""
        if isinstance(spec, FaceDetectorConfig):
            return spec
        if not spec:
            return cls()
        name, sep, rest = str(spec).partition(":")
        if sep and name in DETECTOR_NAMES:
            return cls.from_options(name, rest or None)
        if spec in DETECTOR_NAMES:
            return cls(spec)
        path = Path(spec).expanduser()
        if path.is_dir():
            found = insightface_pack(path)[0]
            if found is None:
                names = " or ".join(INSIGHTFACE_DETECTORS)
                raise ModelNotFoundError(f"{path}: no {names} in the folder (SCRFD detector)")
            return cls("scrfd", found)
        if path.suffix.lower() == ".onnx":
            return cls("scrfd", path)
        raise InputError(
            f"detector {spec!r}: one of {', '.join(DETECTOR_NAMES)}, NAME:FILE, an SCRFD .onnx "
            "or an insightface model folder"
        )

    @property
    def spec(self) -> str:
        """The string :meth:`from_spec` reads back (for config files and fingerprints)."""
        return self.name if self.weights is None else f"{self.name}:{self.weights}"

    def with_options(self, **changes: object) -> FaceDetectorConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def is_dlib(self) -> bool:
        """True for dlib's detectors (``hog``, ``mmod``)."""
        return self.name in ("hog", "mmod")

    @property
    def points_source(self) -> str:
        """Where the five reference points come from, for reports."""
        return {
            "hog": "dlib 68 landmarks",
            "mmod": "dlib 68 landmarks",
            "scrfd": "SCRFD keypoints",
            "mtcnn": "MTCNN O-Net points",
        }[self.name]

    def describe(self) -> str:
        """One line for reports: the detector and its model file."""
        return self.name if self.weights is None else f"{self.name} ({self.weights})"
