"""OpenCV's bilinear resampling of uint8 images, reproduced bit for bit in numpy.

The reference face pipelines (insightface's ``SCRFD.detect`` and ``norm_crop``) resample with
``cv2.resize`` and ``cv2.warpAffine``: plain bilinear interpolation without antialiasing, in
their own arithmetic. These two functions follow it, so the detector's input canvas and the
aligned crops are OpenCV's bytes (checked against ``opencv-python-headless`` by the
``parity`` tests) without depending on OpenCV:

* :func:`resize_linear`: ``cv2.resize(img, (w, h))`` (``INTER_LINEAR``): half-pixel sample
  positions computed in float32, 11-bit weights, the vertical pass on OpenCV's vectorised
  integer path (two truncating products, then a rounding shift).
* :func:`warp_affine`: ``cv2.warpAffine(img, M, (w, h), borderValue=0)`` as OpenCV 5 computes
  it: the inverse map and bilinear weights in float32, pixels outside the image read as 0,
  rounded half to even. It equals ``opencv-python`` 5.x to one level on about 1 pixel in
  10,000 (float rounding order); OpenCV 4.x's fixed-point path (1/32-pixel positions) differs
  from both by up to 4 levels on about 10% of the pixels, so "the reference" itself moved by
  that much between OpenCV releases.

They are for metrics and embeddings that must match the papers. Training losses use
:func:`~instantportrait.faces.align.crop_faces` (differentiable, antialiased).
"""

from __future__ import annotations

import numpy as np

__all__ = ["resize_linear", "warp_affine"]


def _resize_taps(
    src: int, dst: int, clip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First and second source index and their 11-bit weights per output pixel."""
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = (pos - first.astype(np.float32)).astype(np.float32)
    if clip:  # OpenCV clamps the horizontal taps (and their weights) at the borders
        frac[first < 0] = 0.0
        first = np.clip(first, 0, src - 1)
        frac[first >= src - 1] = 0.0
        second = np.minimum(first + 1, src - 1)
    else:  # vertically it keeps the weights and repeats the edge row
        second = np.clip(first + 1, 0, src - 1)
        first = np.clip(first, 0, src - 1)
    w0 = np.round((np.float32(1.0) - frac) * np.float32(2048.0)).astype(np.int64)
    return first, second, w0, 2048 - w0


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(image, (width, height))`` for an ``HxWxC`` uint8 image (no antialias)."""
    h, w = image.shape[:2]
    x0, x1, a0, a1 = _resize_taps(w, width, clip=True)
    y0, y1, b0, b1 = _resize_taps(h, height, clip=False)
    img = image.astype(np.int64)
    if img.ndim == 2:
        img = img[..., None]
    rows = img[:, x0] * a0[None, :, None] + img[:, x1] * a1[None, :, None]
    r0, r1 = rows[y0] >> 4, rows[y1] >> 4
    out = (((b0[:, None, None] * r0) >> 16) + ((b1[:, None, None] * r1) >> 16) + 2) >> 2
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out if image.ndim == 3 else out[..., 0]


def _invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a ``(2, 3)`` affine map, in float64 (OpenCV's ``invertAffineTransform``)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = 1.0 / det if det != 0 else 0.0
    a11, a22, a12, a21 = m[1, 1] * d, m[0, 0] * d, -m[0, 1] * d, -m[1, 0] * d
    b1 = -a11 * m[0, 2] - a12 * m[1, 2]
    b2 = -a21 * m[0, 2] - a22 * m[1, 2]
    return np.array([[a11, a12, b1], [a21, a22, b2]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (width, height), borderValue=0)`` for uint8 images.

    ``matrix``: ``(2, 3)`` map from image to output pixel coordinates (pixel centres at
    integers), as given to OpenCV; bilinear, constant border 0, computed in float32 and
    rounded half to even, as OpenCV 5's ``warpAffine`` does.
    """
    inv = _invert_affine(matrix).astype(np.float32)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    sx = inv[0, 0] * xs + (inv[0, 1] * ys + inv[0, 2])
    sy = inv[1, 0] * xs + (inv[1, 1] * ys + inv[1, 2])
    ix, iy = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx = (sx - ix.astype(np.float32))[..., None]
    fy = (sy - iy.astype(np.float32))[..., None]
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    h, w = img.shape[:2]

    def pixel(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        vals = img[np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]
        return np.where(inside[..., None], vals, np.float32(0.0))

    p00, p10 = pixel(ix, iy), pixel(ix + 1, iy)
    p01, p11 = pixel(ix, iy + 1), pixel(ix + 1, iy + 1)
    top = p00 + fx * (p10 - p00)
    bottom = p01 + fx * (p11 - p01)
    out = np.clip(np.rint(top + fy * (bottom - top)), 0, 255).astype(np.uint8)
    return out if image.ndim == 3 else out[..., 0]
