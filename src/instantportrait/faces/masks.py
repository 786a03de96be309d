"""Face-part masks from 68 landmarks: face, eyes, nose, mouth; dilated and feathered.

Used by FaceA-Net's attribute-driven reconstruction loss (whole face plus one of left eye,
right eye, nose, mouth), DIIR's masked AdaIN and the triplet loss's crops.

Conventions, written down:

* **Left and right are the subject's**, as in the iBUG 300-W annotation: ``left_eye`` is
  landmarks 42-47, which appear on the *image's right* in an unmirrored frontal photo;
  ``right_eye`` is landmarks 36-41, on the image's left.
* ``face``: the convex hull of the jaw line (0-16) and the eyebrows (17-26) raised by
  ``forehead`` times the nose-root-to-chin distance (27 to 8) along the face's up axis, so
  the forehead is included. ``nose``: the hull of 27-35. ``mouth``: the outer lip contour
  48-59. ``eyes``: the eye contours 36-41 / 42-47.
* Polygons are rasterised at pixel centres with a one-pixel linear edge (anti-aliased),
  grown by ``dilate`` pixels (a true distance, so the corners round off), then blurred by a
  Gaussian of standard deviation ``feather`` pixels. Values are in ``[0, 1]``.
* Landmarks are in pixel-centre coordinates of an image of size ``image_size``; the masks
  can be drawn at any other ``size`` (landmarks are rescaled).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FACE_PARTS", "face_masks", "face_mask", "gaussian_blur", "polygon_mask"]

#: The masks :func:`face_masks` can draw.
FACE_PARTS = ("face", "left_eye", "right_eye", "nose", "mouth")

_PART_POINTS = {
    "left_eye": tuple(range(42, 48)),
    "right_eye": tuple(range(36, 42)),
    "nose": tuple(range(27, 36)),
    "mouth": tuple(range(48, 60)),
}
_HULL_PARTS = ("face", "nose")


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull (Andrew's monotone chain) of ``(N, 2)`` points."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    if len(pts) <= 2:
        return np.array(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def polygon_mask(
    polygon: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    dilate: float = 0.0,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Anti-aliased ``(H, W)`` mask of a closed polygon (any simple polygon), grown by ``dilate``.

    Args:
        polygon: ``(K, 2)`` vertices ``(x, y)`` in pixel-centre coordinates.
        size: ``(H, W)`` of the mask.
        dilate: grow the polygon by this many pixels (Euclidean distance; default 0).
        device: where the mask is made (default: the polygon's device, else CPU).
    """
    poly = torch.as_tensor(polygon, dtype=torch.float32, device=device)
    h, w = int(size[0]), int(size[1])
    mask = torch.zeros(h, w, dtype=torch.float32, device=poly.device)
    if poly.shape[0] < 3:
        return mask
    # Only the polygon's bounding box (grown by the dilation) can be non-zero.
    margin = float(dilate) + 2.0
    lo = (poly.min(dim=0).values - margin).floor().clamp_min(0)
    hi = (poly.max(dim=0).values + margin).ceil()
    x0, y0 = int(lo[0]), int(lo[1])
    x1, y1 = min(int(hi[0]) + 1, w), min(int(hi[1]) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return mask
    ys = torch.arange(y0, y1, dtype=torch.float32, device=poly.device)
    xs = torch.arange(x0, x1, dtype=torch.float32, device=poly.device)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    p = torch.stack([px, py], dim=-1).reshape(-1, 1, 2)  # (N, 1, 2)
    a = poly.unsqueeze(0)  # (1, K, 2)
    b = torch.roll(poly, -1, dims=0).unsqueeze(0)
    ab = b - a
    ap = p - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
    dist = (ap - t.unsqueeze(-1) * ab).norm(dim=-1).min(dim=-1).values  # (N,)
    # Even-odd rule: count crossings of a horizontal ray to the right of each point.
    ya, yb = a[..., 1], b[..., 1]
    straddles = (ya > p[..., 1]) != (yb > p[..., 1])
    dy = torch.where(ab[..., 1] == 0, torch.ones_like(ab[..., 1]), ab[..., 1])
    x_cross = a[..., 0] + (p[..., 1] - ya) * ab[..., 0] / dy
    inside = ((straddles & (p[..., 0] < x_cross)).sum(-1) % 2) == 1
    signed = torch.where(inside, -dist, dist)
    window = (0.5 - (signed - float(dilate))).clamp(0.0, 1.0).reshape(y1 - y0, x1 - x0)
    mask[y0:y1, x0:x1] = window
    return mask


def gaussian_blur(masks: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with standard deviation ``sigma`` pixels."""
    if sigma <= 0:
        return masks
    radius = max(1, int(round(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=masks.dtype, device=masks.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = masks.shape[1]
    out = F.conv2d(masks, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, radius), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(radius, 0), groups=c)


def _part_polygon(lm: np.ndarray, part: str, forehead: float) -> np.ndarray:
    if part == "face":
        jaw, brows = lm[0:17], lm[17:27]
        up = lm[27] - lm[8]
        length = float(np.linalg.norm(up))
        up = up / max(length, 1e-6)
        raised = brows + up * forehead * length
        return _convex_hull(np.concatenate([jaw, brows, raised]))
    pts = lm[list(_PART_POINTS[part])]
    return _convex_hull(pts) if part in _HULL_PARTS else pts


def face_masks(
    landmarks68: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    parts: Sequence[str] = FACE_PARTS,
    *,
    image_size: tuple[int, int] | None = None,
    dilate: float = 0.0,
    feather: float = 0.0,
    forehead: float = 0.4,
) -> dict[str, torch.Tensor]:
    """Masks ``{part: (B, 1, H, W)}`` with values in ``[0, 1]`` from 68 landmarks.

    Args:
        landmarks68: ``(B, 68, 2)`` or ``(68, 2)`` iBUG landmarks (pixel-centre coordinates).
        size: ``(H, W)`` of the masks.
        parts: which of :data:`FACE_PARTS` to draw (default all: face, left_eye, right_eye,
            nose, mouth; left/right are the subject's).
        image_size: ``(H, W)`` of the image the landmarks refer to (default: ``size``); the
            landmarks are rescaled to ``size``.
        dilate: grow every region by this many pixels of the mask (default 0).
        feather: Gaussian blur standard deviation in pixels of the mask (default 0: none).
        forehead: how far the eyebrows are raised for the face mask, as a fraction of the
            nose-root-to-chin distance (default 0.4).
    """
    lm = torch.as_tensor(landmarks68).detach().to("cpu", torch.float64)
    if lm.dim() == 2:
        lm = lm.unsqueeze(0)
    if lm.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks68: expected (B, 68, 2), got {tuple(lm.shape)}")
    unknown = [p for p in parts if p not in FACE_PARTS]
    if unknown:
        raise ValueError(f"parts: unknown {unknown}; choose from {', '.join(FACE_PARTS)}")
    h, w = int(size[0]), int(size[1])
    if image_size is not None:
        ih, iw = image_size
        scale = torch.tensor([w / iw, h / ih], dtype=lm.dtype)
        lm = (lm + 0.5) * scale - 0.5
    device = landmarks68.device if isinstance(landmarks68, torch.Tensor) else None
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        masks = [
            polygon_mask(_part_polygon(item.numpy(), part, forehead), (h, w), dilate) for item in lm
        ]
        m = torch.stack(masks).unsqueeze(1)
        out[part] = gaussian_blur(m, feather).clamp(0.0, 1.0).to(device)
    return out


def face_mask(
    landmarks68: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    part: str = "face",
    **kwargs,
) -> torch.Tensor:
    """One mask ``(B, 1, H, W)``; ``kwargs`` as for :func:`face_masks`."""
    return face_masks(landmarks68, size, (part,), **kwargs)[part]
