"""Filters of generated pairs (App. B.2), each recording why it dropped a pair.

A pair is kept when, in order:

1. ``no_face_target`` / ``no_face_input``: a face is found in the target and in the input
   (dlib's detector through :mod:`instantportrait.faces`; the largest face counts);
2. ``small_face``: the input's face box is at least ``min_face_fraction`` of the image's
   short side (a face a few pixels wide teaches the identity loss nothing);
3. ``blurry``: the variance of the Laplacian of the input's face region (grey, 0-255) is at
   least ``min_sharpness`` (the usual focus measure: a blurred face has few high frequencies);
4. ``identity``: the two faces are the same person. With dlib's ResNet (the default) that is
   its own rule, the Euclidean distance of the raw 128-D descriptors below 0.6, the threshold
   dlib's model was trained for; with another embedder (ArcFace...) the cosine distance
   ``1 - cos`` below ``identity_threshold``.

The first failing check is the pair's reason; the measured values are kept either way. The
input's 5 landmarks (dlib's order, input pixels) come out of the same detection and are
stored with each kept pair for the identity loss; with SCRFD or MTCNN their own five
keypoints too (``keypoints``), which the trainers then crop from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError

#: Every reason a filter can give, in the order the checks run.
REASONS = ("no_face_target", "no_face_input", "small_face", "blurry", "identity")


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the pair filters (``enabled=False``: keep every pair, ``--no-filter``)."""

    enabled: bool = True
    min_face_fraction: float = 0.08
    min_sharpness: float = 20.0
    identity_threshold: float = 0.6
    embedder: str = "dlib"
    embedder_weights: str | None = None
    #: the face detector as a spec (``hog``, ``mmod``, ``mtcnn``, ``scrfd:FILE.onnx``, an
    #: insightface model folder; see ``FaceDetectorConfig.from_spec``)
    detector: str = "hog"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_face_fraction < 1.0:
            raise InputError("--min-face-fraction: a fraction in [0, 1)")
        if self.min_sharpness < 0:
            raise InputError("--min-sharpness: must be non-negative")
        if self.identity_threshold <= 0:
            raise InputError("--identity-threshold: must be positive")


@dataclass
class FilterResult:
    """One pair's verdict: ``reason`` is ``None`` when kept; ``metrics`` what was measured."""

    reason: str | None
    landmarks: list[list[float]] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: the input's five keypoints from SCRFD or MTCNN (``None`` with dlib's detectors)
    keypoints: list[list[float]] | None = None

    @property
    def kept(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _points(array: Any) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in array.tolist()]


def own_keypoints(det: Any) -> list[list[float]] | None:
    """The largest face's keypoints when the detector gives its own (SCRFD, MTCNN); ``None``
    with dlib's detectors (their keypoints are derived from the 68 landmarks)."""
    if det is None or det.method not in ("scrfd", "mtcnn") or det.keypoints is None:
        return None
    return _points(det.keypoints[0])


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grey image (0-255): the focus measure."""
    g = np.asarray(gray, dtype=np.float64)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def dlib_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two raw dlib descriptors (same person below 0.6)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - cos(a, b)``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class PairFilter:
    """Checks a generated (input, target) pair; see the module's docstring for the rules.

    The face analyzer (detector + embedder) is built on first use. With ``enabled=False``
    only the input's landmarks are looked for (when dlib is installed) and every pair is kept.
    """

    def __init__(self, config: FilterConfig | None = None, analyzer: Any = None):
        self.config = config or FilterConfig()
        self._analyzer = analyzer

    @property
    def analyzer(self):
        if self._analyzer is None:
            from ..faces import FaceAnalyzer

            embedder = self.config.embedder if self.config.enabled else None
            from ..faces.detectors import FaceDetectorConfig

            self._analyzer = FaceAnalyzer(
                detector=FaceDetectorConfig.from_spec(self.config.detector),
                embedder=embedder,
                weights=self.config.embedder_weights,
                select="largest",
                min_size=8,
            )
        return self._analyzer

    def _largest(self, image: Image.Image):
        last = getattr(self, "_last", None)
        if last is not None and last[0] is image:  # landmarks_only then keypoints_only
            return last[1]
        faces = self.analyzer.detect(image, landmarks=True, raise_if_none=False)
        faces = None if len(faces) == 0 else faces
        self._last = (image, faces)
        return faces

    def landmarks_only(self, image: Image.Image) -> list[list[float]] | None:
        """The input's 5 landmarks, or ``None`` when no face (or no dlib) is found."""
        try:
            det = self._largest(image)
        except ImportError:
            return None
        if det is None or det.landmarks5 is None:
            return None
        return _points(det.landmarks5[0])

    def keypoints_only(self, image: Image.Image) -> list[list[float]] | None:
        """The input's SCRFD / MTCNN keypoints (:func:`own_keypoints`), or ``None``."""
        if self.config.detector in ("hog", "mmod"):
            return None
        try:
            return own_keypoints(self._largest(image))
        except ImportError:
            return None

    def __call__(self, input_image: Image.Image, target_image: Image.Image) -> FilterResult:
        if not self.config.enabled:
            kps = self.keypoints_only(input_image)
            return FilterResult(None, self.landmarks_only(input_image), keypoints=kps)
        cfg = self.config
        metrics: dict[str, float] = {}
        det_t = self._largest(target_image)
        if det_t is None:
            return FilterResult("no_face_target", None, metrics)
        det_i = self._largest(input_image)
        if det_i is None:
            return FilterResult("no_face_input", None, metrics)
        lm = None if det_i.landmarks5 is None else _points(det_i.landmarks5[0])
        kps = own_keypoints(det_i)
        x0, y0, x1, y1 = (float(v) for v in det_i.boxes[0].tolist())
        side = min(x1 - x0, y1 - y0)
        metrics["face_fraction"] = side / min(input_image.size)
        if metrics["face_fraction"] < cfg.min_face_fraction:
            return FilterResult("small_face", lm, metrics, kps)
        box = (max(0, int(x0)), max(0, int(y0)), int(x1), int(y1))
        metrics["sharpness"] = laplacian_variance(np.asarray(input_image.convert("L").crop(box)))
        if metrics["sharpness"] < cfg.min_sharpness:
            return FilterResult("blurry", lm, metrics, kps)
        an = self.analyzer
        embeddings = []
        for image, det in ((input_image, det_i), (target_image, det_t)):
            points, kind = an._preferred_landmarks(det, an.template)
            crops = an.align(image, points[:1], points=kind)
            raw = an.embed(crops, normalize=False)[0].detach().float().cpu().numpy()
            embeddings.append(raw)
        if cfg.embedder == "dlib":
            metrics["identity_distance"] = dlib_distance(*embeddings)
        else:
            metrics["identity_distance"] = cosine_distance(*embeddings)
        if metrics["identity_distance"] >= cfg.identity_threshold:
            return FilterResult("identity", lm, metrics, kps)
        return FilterResult(None, lm, metrics, kps)
