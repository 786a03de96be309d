"""Square head-and-shoulders crops and face-part box masks from 68 landmarks (FaceA-Net).

FaceA-Net tunes on 512x512 crops around the face and masks the face and one of its
attributes with boxes (the paper uses Grounding-DINO boxes). Our default mask provider is
the face stack's 68 landmarks, which gives the same boxes without a detector download:

* ``face``: the box of the jaw line and the eyebrows raised by ``forehead`` of the
  nose-root-to-chin distance (the face stack's face region);
* ``left_eye`` / ``right_eye`` / ``nose`` / ``mouth``: the box of that part's landmarks.
  Left and right are the **subject's** (iBUG / :mod:`instantportrait.faces.masks`): the left
  eye is landmarks 42-47, on the image's right in an unmirrored photo.

Every box is grown by ``dilate`` times the face box's side on each side (about 5%, the spec's
dilation; eye boxes become eye-and-lid boxes like a detector's). ``shape="polygon"`` draws
the face stack's polygons instead (dilated by the same amount).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..models.feat_embeddings import TASKS

_PART_POINTS = {
    "left_eye": slice(42, 48),
    "right_eye": slice(36, 42),
    "nose": slice(27, 36),
    "mouth": slice(48, 60),
}


def face_points(landmarks68: np.ndarray, forehead: float = 0.4) -> np.ndarray:
    """The face region's outline points: jaw, brows and brows raised toward the hairline."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    up = lm[27] - lm[8]
    length = float(np.linalg.norm(up))
    up = up / max(length, 1e-6)
    brows = lm[17:27]
    return np.concatenate([lm[0:17], brows, brows + up * forehead * length])


def part_boxes(
    landmarks68: np.ndarray, dilate: float = 0.05, forehead: float = 0.4
) -> dict[str, np.ndarray]:
    """``{task: (x0, y0, x1, y1)}`` boxes of :data:`TASKS` in the landmarks' pixel frame."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    pts = {"face": face_points(lm, forehead), **{k: lm[s] for k, s in _PART_POINTS.items()}}
    face = pts["face"]
    grow = dilate * float(max(np.ptp(face[:, 0]), np.ptp(face[:, 1])))
    return {
        task: np.array([*(p.min(0) - grow), *(p.max(0) + grow)], dtype=np.float64)
        for task, p in ((t, pts[t]) for t in TASKS)
    }


def box_mask(box: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Binary ``(1, H, W)`` mask: 1 on pixels whose centre lies inside ``box``."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float64).view(-1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64).view(1, -1) + 0.5
    x0, y0, x1, y1 = (float(v) for v in box)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    return inside.float().unsqueeze(0)


def task_masks(
    landmarks68: np.ndarray,
    size: tuple[int, int],
    *,
    shape: str = "box",
    dilate: float = 0.05,
    forehead: float = 0.4,
) -> torch.Tensor:
    """Masks ``(len(TASKS), 1, H, W)`` in {0, 1} of face, left eye, right eye, nose, mouth."""
    if shape == "box":
        boxes = part_boxes(landmarks68, dilate, forehead)
        return torch.stack([box_mask(boxes[t], size) for t in TASKS])
    if shape != "polygon":
        raise ValueError(f"mask shape: box or polygon, got {shape!r}")
    from ..faces.masks import face_masks

    lm = np.asarray(landmarks68, dtype=np.float64)
    face = face_points(lm, forehead)
    grow = dilate * float(max(np.ptp(face[:, 0]), np.ptp(face[:, 1])))
    masks = face_masks(torch.from_numpy(lm), size, TASKS, dilate=grow, forehead=forehead)
    return torch.stack([(masks[t][0] > 0.5).float() for t in TASKS])


def square_around(
    box: np.ndarray, scale: float, image_size: tuple[int, int]
) -> tuple[int, int, int]:
    """A square ``(x0, y0, side)`` of ``scale`` times the box's long side, centred on it,
    shifted (and if needed shrunk) to lie inside an image of ``(width, height)``."""
    w, h = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    side = int(round(max(x1 - x0, y1 - y0) * scale))
    side = max(8, min(side, w, h))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    return left, top, side


@dataclass
class FaceCrop:
    """One tuning crop: the image, its 68 landmarks in crop pixels, where it came from."""

    image: Image.Image
    landmarks68: np.ndarray
    square: tuple[int, int, int]
    face_ratio: float
    name: str = ""


def head_and_shoulders_crop(
    image: Image.Image,
    landmarks68: np.ndarray,
    *,
    resolution: int = 512,
    scale: float = 2.25,
    forehead: float = 0.4,
    name: str = "",
) -> FaceCrop:
    """Square crop of ``scale`` x the face box (head and shoulders), resized to ``resolution``.

    ``face_ratio`` (face box side / crop side) is what the pipeline matches at generation.
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    face = part_boxes(lm, 0.0, forehead)["face"]
    left, top, side = square_around(face, scale, image.size)
    crop = image.crop((left, top, left + side, top + side)).resize(
        (resolution, resolution), Image.Resampling.LANCZOS
    )
    k = resolution / side
    lm_crop = (lm + 0.5 - np.array([left, top])) * k - 0.5
    face_side = max(face[2] - face[0], face[3] - face[1])
    return FaceCrop(crop, lm_crop.astype(np.float32), (left, top, side), face_side / side, name)


def detect_landmarks68(image: Any, *, select: str | int = "largest", name: str = "") -> Any:
    """The face stack's detections (68 landmarks) of one image; raises when no face."""
    from ..faces.detect import detect

    return detect(image, select=select, landmarks=68)
