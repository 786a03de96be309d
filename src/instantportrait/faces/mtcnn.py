"""MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks") with facenet-pytorch's published weights, and FaceNet's crop.

FaceNet's numbers (the InceptionResnetV1 VGGFace2 similarity of the papers) come from
facenet-pytorch's pipeline: MTCNN finds the face, ``extract_face`` cuts the box (plus a
margin) and resizes it to 160 px, and ``fixed_image_standardization`` maps it to
``(x - 127.5) / 128``. This module is that pipeline in our own code:

* :class:`PNet`, :class:`RNet`, :class:`ONet`: the three networks, with facenet-pytorch's
  parameter names so its ``pnet.pt`` / ``rnet.pt`` / ``onet.pt`` load as they are;
* :class:`MtcnnDetector`: the cascade of ``detect_face`` (image pyramid with factor 0.709 from
  the 20-px minimum face, P-Net proposals and NMS per scale and over all scales, box
  regression, squaring, R-Net and O-Net refinement on area-resampled 24/48-px crops, O-Net's
  five points, "Min" NMS), giving boxes, probabilities and the five points;
* :func:`facenet_crop`: ``extract_face``'s crop for a PIL image (integer box, margin,
  ``Image.BILINEAR`` resize to 160 px).

The weights ship with the package (``faces/data/mtcnn_facenet_pytorch.safetensors``, 2 MB):
a safetensors conversion of facenet-pytorch 2.6.0's ``data/{pnet,rnet,onet}.pt``, which are
MIT-licensed (Copyright (c) 2019 Timothy Esler; the licence text is in
``faces/data/MTCNN_LICENSE.md``). facenet-pytorch itself is not a dependency (its pins keep
old torch versions).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelNotFoundError

__all__ = [
    "MTCNN_WEIGHTS",
    "MtcnnDetector",
    "ONet",
    "PNet",
    "RNet",
    "facenet_crop",
]

#: The shipped weights (facenet-pytorch's P/R/O-Net, MIT).
MTCNN_WEIGHTS = Path(__file__).parent / "data" / "mtcnn_facenet_pytorch.safetensors"
#: facenet-pytorch's defaults.
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
PYRAMID_FACTOR = 0.709


class PNet(nn.Module):
    """MTCNN's proposal network (fully convolutional, 12-px receptive field)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box offsets ``(B, 4, h, w)`` and face probabilities ``(B, 2, h, w)``."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """MTCNN's refinement network (24x24 crops)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box offsets ``(B, 4)`` and face probabilities ``(B, 2)``."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # the weights were converted from Caffe: features flattened as (w, h, c)
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """MTCNN's output network (48x48 crops): boxes, five points, probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Box offsets ``(B, 4)``, points ``(B, 10)`` (5 x then 5 y, in units of the box)
        and face probabilities ``(B, 2)``."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """torchvision's ``nms``: areas ``(x1 - x0) * (y1 - y0)``, IoU above ``iou`` suppressed;
    kept indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].double()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(b[i, 2], b[:, 2]) - torch.maximum(b[i, 0], b[:, 0])).clamp_min(0)
        h = (torch.minimum(b[i, 3], b[:, 3]) - torch.maximum(b[i, 1], b[:, 1])).clamp_min(0)
        inter = w * h
        over = inter / (area[i] + area - inter)
        suppressed |= over > iou
    return order[torch.tensor(keep, dtype=torch.long)]


def _nms_min(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """MTCNN's final NMS: inclusive ``+1`` areas, overlap over the smaller area ("Min")."""
    x0, y0, x1, y1 = (boxes[:, i].copy() for i in range(4))
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        overlap = (w * h) / np.minimum(area[i], area[rest])
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes made square around their centres, side = the longer side (``rerec``)."""
    out = boxes.clone()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Box regression with inclusive sizes (``bbreg``)."""
    out = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] = boxes[:, 0] + offsets[:, 0] * w
    out[:, 1] = boxes[:, 1] + offsets[:, 1] * h
    out[:, 2] = boxes[:, 2] + offsets[:, 2] * w
    out[:, 3] = boxes[:, 3] + offsets[:, 3] * h
    return out


def _crops(image: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """Area-resampled ``side`` x ``side`` crops of the (truncated, clipped) boxes."""
    h, w = image.shape[-2:]
    b = boxes[:, :4].trunc().int().numpy()
    x0, y0 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    x1, y1 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    out = []
    for k in range(len(b)):
        if y1[k] > y0[k] - 1 and x1[k] > x0[k] - 1:
            patch = image[:, :, y0[k] - 1 : y1[k], x0[k] - 1 : x1[k]]
            out.append(F.interpolate(patch, size=(side, side), mode="area"))
    return (torch.cat(out) - 127.5) * 0.0078125


class MtcnnDetector:
    """MTCNN's cascade as facenet-pytorch's ``detect_face`` (module docstring).

    Args:
        pnet, rnet, onet: the networks (see :meth:`load`).
        min_face: the smallest face in pixels (default 20).
        thresholds: the three stages' probability thresholds (default 0.6, 0.7, 0.7).
        factor: the pyramid's scale step (default 0.709).
    """

    def __init__(
        self,
        pnet: PNet,
        rnet: RNet,
        onet: ONet,
        min_face: int = 20,
        thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS,
        factor: float = PYRAMID_FACTOR,
    ) -> None:
        self.pnet, self.rnet, self.onet = pnet.eval(), rnet.eval(), onet.eval()
        self.min_face = int(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)

    @classmethod
    def load(
        cls,
        weights: str | os.PathLike | None = None,
        min_face: int = 20,
        threshold: float | None = None,
    ) -> MtcnnDetector:
        """The detector with the shipped weights, or a safetensors with ``pnet.``/``rnet.``/
        ``onet.`` keys; ``threshold`` replaces the last stage's (default 0.7)."""
        from safetensors.torch import load_file

        from .weights import load_into

        path = Path(weights) if weights is not None else MTCNN_WEIGHTS
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: MTCNN weights not found")
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
            raise InputError(f"{path}: cannot read MTCNN weights ({type(exc).__name__})") from None
        nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
        for name, net in nets.items():
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            load_into(net, part, str(path), f"MTCNN {name}")
            net.requires_grad_(False)
        thresholds = list(DEFAULT_THRESHOLDS)
        if threshold is not None:
            thresholds[2] = float(threshold)
        return cls(nets["pnet"], nets["rnet"], nets["onet"], min_face, tuple(thresholds))

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / self.min_face
        smallest = min(h, w) * m
        scales, scale = [], m
        while smallest >= 12:
            scales.append(scale)
            scale *= self.factor
            smallest *= self.factor
        return scales

    def _proposals(self, image: torch.Tensor) -> torch.Tensor:
        """P-Net candidates ``(K, 9)``: box, score, offsets."""
        h, w = image.shape[-2:]
        found = []
        for scale in self._scales(h, w):
            data = F.interpolate(image, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            offsets, probs = self.pnet((data - 127.5) * 0.0078125)
            prob = probs[0, 1]
            ys, xs = torch.nonzero(prob >= self.thresholds[0], as_tuple=True)
            pos = torch.stack([xs, ys], dim=1).to(offsets.dtype)
            first = ((2 * pos + 1) / scale).floor()
            second = ((2 * pos + 12) / scale).floor()
            cand = torch.cat([first, second, prob[ys, xs, None], offsets[0][:, ys, xs].T], dim=1)
            found.append(cand[_nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return torch.zeros(0, 9)
        return torch.cat(found)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in an ``HxWx3`` RGB uint8 image: boxes ``(N, 4)`` ``(x0, y0, x1, y1)``,
        probabilities ``(N,)`` and points ``(N, 5, 2)`` (eyes, nose, mouth corners)."""
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        h, w = img.shape[-2:]
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2)))
        cand = self._proposals(img)
        cand = cand[_nms(cand[:, :4], cand[:, 4], 0.7)]
        if not len(cand):
            return empty
        rw, rh = cand[:, 2] - cand[:, 0], cand[:, 3] - cand[:, 1]
        boxes = torch.stack(
            [
                cand[:, 0] + cand[:, 5] * rw,
                cand[:, 1] + cand[:, 6] * rh,
                cand[:, 2] + cand[:, 7] * rw,
                cand[:, 3] + cand[:, 8] * rh,
                cand[:, 4],
            ],
            dim=1,
        )
        boxes = _square(boxes)
        # R-Net
        offsets, probs = self.rnet(_crops(img, boxes, 24))
        keep = probs[:, 1] > self.thresholds[1]
        boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
        offsets = offsets[keep]
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _square(_regress(boxes[pick], offsets[pick]))
        if not len(boxes):
            return empty
        # O-Net
        offsets, points, probs = self.onet(_crops(img, boxes, 48))
        keep = probs[:, 1] > self.thresholds[2]
        boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
        offsets, points = offsets[keep], points[keep]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * points[:, :5] + boxes[:, 0:1] - 1
        py = bh[:, None] * points[:, 5:] + boxes[:, 1:2] - 1
        kps = torch.stack([px, py], dim=-1)
        boxes = _regress(boxes, offsets)
        pick = _nms_min(boxes[:, :4].numpy(), boxes[:, 4].numpy(), 0.7)
        boxes, kps = boxes[pick], kps[pick]
        return boxes[:, :4].numpy(), boxes[:, 4].numpy(), kps.numpy()


def facenet_crop(
    image: np.ndarray, box: np.ndarray | torch.Tensor, size: int = 160, margin: int = 0
) -> np.ndarray:
    """facenet-pytorch's ``extract_face`` for a PIL image: the box widened by ``margin``
    pixels of the output, truncated to integers and clipped to the image, cut and resized to
    ``size`` x ``size`` with PIL's bilinear filter. ``HxWx3`` uint8 in and out."""
    from PIL import Image

    x0, y0, x1, y1 = (float(v) for v in box)
    mx = margin * (x1 - x0) / (size - margin)
    my = margin * (y1 - y0) / (size - margin)
    h, w = image.shape[:2]
    rect = (
        int(max(x0 - mx / 2, 0)),
        int(max(y0 - my / 2, 0)),
        int(min(x1 + mx / 2, w)),
        int(min(y1 + my / 2, h)),
    )
    face = Image.fromarray(image).crop(rect).resize((size, size), Image.BILINEAR)
    return np.array(face, dtype=np.uint8)
