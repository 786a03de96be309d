"""SCRFD face detection (Guo et al. 2021, "Sample and Computation Redistribution for Efficient
Face Detection") on onnxruntime, with our own decoder.

insightface's model packs ship SCRFD as ONNX: ``det_10g.onnx`` (``buffalo_l``) and
``scrfd_10g_bnkps.onnx`` (``antelopev2``). Its five keypoints (eye centres, nose tip, mouth
corners) are the points behind every insightface embedding, FaceID's and the papers' ArcFace
numbers. This module reproduces insightface's ``SCRFD.detect`` step by step:

1. the image is resized, keeping its aspect ratio, to fit the detection size (640 x 640), with
   OpenCV's bilinear interpolation without antialiasing (bit for bit:
   :func:`~.resample.resize_linear`), and pasted at the top-left corner of a black canvas;
2. the network reads RGB ``(x - 127.5) / 128`` and returns, per stride (8, 16, 32) and per
   anchor (2 per position), a score, four distances and (with keypoints) ten offsets, in
   units of the stride;
3. :func:`anchor_centres`, :func:`distance_to_box` and :func:`distance_to_keypoints` decode
   them; candidates scoring at least the threshold (0.5) are kept;
4. :func:`nms` (IoU 0.4, insightface's inclusive ``+1`` areas) removes duplicates; boxes and
   points are scaled back to the image.

Models without keypoints (6 outputs) give boxes only. Outputs come as ``[scores x 3, boxes x
3, keypoints x 3]`` (optionally with a leading batch axis of 1), in insightface's order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelNotFoundError, optional_import
from .resample import resize_linear

__all__ = [
    "SCRFD_STRIDES",
    "ScrfdDetector",
    "anchor_centres",
    "decode_outputs",
    "distance_to_box",
    "distance_to_keypoints",
    "letterbox",
    "nms",
]

#: Feature strides of the 3-level SCRFD models (6 or 9 outputs), two anchors per position.
SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2
#: insightface's input normalisation for SCRFD: ``(x - 127.5) / 128``.
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0


def anchor_centres(height: int, width: int, stride: int, num_anchors: int = 2) -> np.ndarray:
    """``(height * width * num_anchors, 2)`` anchor centres ``(x, y)`` in input pixels.

    Row-major over the feature map, each position repeated ``num_anchors`` times, at
    ``(column * stride, row * stride)`` (SCRFD's anchor points have no half-stride offset).
    """
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, num_anchors, axis=0)


def distance_to_box(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Boxes ``(x0, y0, x1, y1)`` from distances to the left, top, right and bottom sides."""
    return np.stack(
        [
            centres[:, 0] - distances[:, 0],
            centres[:, 1] - distances[:, 1],
            centres[:, 0] + distances[:, 2],
            centres[:, 1] + distances[:, 3],
        ],
        axis=-1,
    )


def distance_to_keypoints(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Keypoints ``(N, K, 2)`` from ``(N, 2K)`` offsets ``(dx0, dy0, dx1, dy1, ...)``."""
    k = offsets.shape[1] // 2
    return centres[:, None, :] + offsets.reshape(-1, k, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.4) -> np.ndarray:
    """Greedy non-maximum suppression as insightface's SCRFD: indices kept, best first.

    Areas use the inclusive pixel convention ``(x1 - x0 + 1) * (y1 - y0 + 1)``; a candidate is
    dropped when its IoU with a kept box exceeds ``iou``; equal scores keep their order.
    """
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The detector's input canvas ``(height, width, 3)`` and the image-to-canvas scale.

    The image keeps its aspect ratio, fills the canvas' width or height, and sits at the
    top-left corner on black (insightface's ``SCRFD.detect``).
    """
    w_in, h_in = size
    h, w = image.shape[:2]
    if h / w > h_in / w_in:
        new_h = h_in
        new_w = int(new_h / (h / w))
    else:
        new_w = w_in
        new_h = int(new_w * (h / w))
    canvas = np.zeros((h_in, w_in, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resize_linear(image, new_w, new_h)
    return canvas, new_h / h


def decode_outputs(
    outs: list[np.ndarray],
    height: int,
    width: int,
    scale: float = 1.0,
    threshold: float = 0.5,
    nms_iou: float = 0.4,
    batched: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Faces from SCRFD's raw outputs for a ``height x width`` canvas.

    Args:
        outs: 6 or 9 arrays ``[scores x 3, distances x 3, (keypoint offsets x 3)]`` for strides
            8, 16, 32, each ``(H/s * W/s * 2, C)`` (``C`` 1, 4, 10), in units of the stride;
            with a leading batch axis of 1 when ``batched``.
        height, width: the canvas the network read.
        scale: the image-to-canvas scale; boxes and points are divided by it.
        threshold: candidates need a score of at least this.
        nms_iou: see :func:`nms`.

    Returns:
        boxes ``(N, 4)``, scores ``(N,)``, keypoints ``(N, 5, 2)`` or ``None``, best first.
    """
    if len(outs) not in (6, 9):
        raise ValueError(f"SCRFD: expected 6 or 9 outputs, got {len(outs)}")
    n = len(SCRFD_STRIDES)
    with_kps = len(outs) == 9
    scores, boxes, points = [], [], []
    for level, stride in enumerate(SCRFD_STRIDES):
        group = [outs[level + g * n] for g in range(3 if with_kps else 2)]
        if batched:
            group = [g[0] for g in group]
        centres = anchor_centres(height // stride, width // stride, stride, SCRFD_ANCHORS)
        score = group[0].reshape(-1)
        keep = np.where(score >= threshold)[0]
        scores.append(score[keep])
        boxes.append(distance_to_box(centres, group[1] * stride)[keep])
        if with_kps:
            points.append(distance_to_keypoints(centres, group[2] * stride)[keep])
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="stable")
    score = score[order].astype(np.float32)
    box = (np.concatenate(boxes) / scale)[order].astype(np.float32)
    keep = nms(box, score, nms_iou)
    kps = None
    if with_kps:
        kps = (np.concatenate(points) / scale)[order][keep].astype(np.float32)
    return box[keep], score[keep], kps


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ScrfdDetector:
    """An SCRFD ONNX model and our decoder.

    Args:
        path: the ``.onnx`` file (``det_10g.onnx`` of buffalo_l, ``scrfd_10g_bnkps.onnx`` of
            antelopev2, or any SCRFD export with 6 or 9 outputs).
        det_size: the detection canvas ``(width, height)`` (default 640 x 640, as the papers'
            ``FaceAnalysis.prepare(det_size=(640, 640))``); a model with a fixed input size
            uses its own.
        threshold: the score threshold (default 0.5, insightface's ``det_thresh``).
        nms_iou: the NMS IoU threshold (default 0.4).
        providers: onnxruntime execution providers (default CPU).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        det_size: tuple[int, int] = (640, 640),
        threshold: float = 0.5,
        nms_iou: float = 0.4,
        providers: list[str] | None = None,
    ) -> None:
        ort = optional_import("onnxruntime", "onnx", "the SCRFD face detector")
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelNotFoundError(
                f"{p}: SCRFD model not found (det_10g.onnx of insightface's buffalo_l or "
                "scrfd_10g_bnkps.onnx of antelopev2)"
            )
        try:
            self.session = ort.InferenceSession(
                str(p), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise InputError(f"{p}: cannot load the SCRFD model ({_first_line(exc)})") from None
        outputs = self.session.get_outputs()
        if len(outputs) not in (6, 9):
            raise InputError(
                f"{p}: not a 3-stride SCRFD model (expected 6 or 9 outputs, got {len(outputs)})"
            )
        self.path = p
        self.use_keypoints = len(outputs) == 9
        self.batched = len(outputs[0].shape) == 3
        self.output_names = [o.name for o in outputs]
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        fixed = inp.shape[2:4]
        if all(isinstance(v, int) and v > 0 for v in fixed):
            det_size = (int(fixed[1]), int(fixed[0]))
        self.det_size = (int(det_size[0]), int(det_size[1]))
        self.threshold = float(threshold)
        self.nms_iou = float(nms_iou)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Faces in an ``HxWx3`` RGB uint8 image: boxes ``(N, 4)`` ``(x0, y0, x1, y1)``,
        scores ``(N,)`` and keypoints ``(N, 5, 2)`` (``None`` without keypoints), best first."""
        canvas, scale = letterbox(image, self.det_size)
        blob = (canvas.astype(np.float32) - SCRFD_MEAN) / SCRFD_STD
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        outs = self.session.run(self.output_names, {self.input_name: blob})
        return self.decode(outs, canvas.shape[0], canvas.shape[1], scale)

    def decode(
        self, outs: list[np.ndarray], height: int, width: int, scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:func:`decode_outputs` with this model's settings."""
        return decode_outputs(
            outs, height, width, scale, self.threshold, self.nms_iou, self.batched
        )
