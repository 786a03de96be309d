"""Canny edges in numpy: the control image of the input generation (App. B.2).

OpenCV is not a dependency of the toolkit (a large wheel for one function), and a dataset
must not change with whether it happens to be installed, so the edges are always computed
here: Gaussian smoothing, Sobel gradients, non-maximum suppression along the gradient
direction quantised to four angles, and hysteresis between a low and a high threshold on
the gradient magnitude of the 0-255 grey image (OpenCV's convention, L1 norm). The edge map
is an RGB image with white edges on black, as canny ControlNets were trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["canny", "canny_image"]


def _convolve_separable(img: np.ndarray, kernel_x: np.ndarray, kernel_y: np.ndarray) -> np.ndarray:
    """2-D correlation with a separable kernel, edges replicated."""
    rx, ry = len(kernel_x) // 2, len(kernel_y) // 2
    padded = np.pad(img, ((ry, ry), (rx, rx)), mode="edge")
    h, w = img.shape
    tmp = sum(kernel_x[i] * padded[:, i : i + w] for i in range(len(kernel_x)))
    return sum(kernel_y[i] * tmp[i : i + h, :] for i in range(len(kernel_y)))


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def canny(
    gray: np.ndarray, low: float = 100.0, high: float = 200.0, sigma: float = 1.0
) -> np.ndarray:
    """Boolean edge map of a ``(H, W)`` grey image in 0-255.

    Args:
        gray: the image (any real dtype, 0-255 scale).
        low, high: hysteresis thresholds on the L1 Sobel magnitude (OpenCV's defaults of the
            canny ControlNet recipes: 100 and 200).
        sigma: the Gaussian smoothing's standard deviation in pixels (0 disables).
    """
    img = np.asarray(gray, dtype=np.float64)
    if sigma > 0:
        g = _gaussian_kernel(sigma)
        img = _convolve_separable(img, g, g)
    smooth, diff = np.array([1.0, 2.0, 1.0]), np.array([-1.0, 0.0, 1.0])
    gx = _convolve_separable(img, diff, smooth)
    gy = _convolve_separable(img, smooth, diff)
    mag = np.abs(gx) + np.abs(gy)

    # non-maximum suppression: keep a pixel that is no smaller than both neighbours along
    # its gradient direction (0, 45, 90, 135 degrees)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(int) % 4
    p = np.pad(mag, 1)
    h, w = mag.shape
    shifted = {
        (dy, dx): p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    }
    # sector 0: horizontal gradient -> compare left/right; 2: vertical -> up/down;
    # 1 (45 deg, y grows downwards): down-right/up-left; 3: down-left/up-right
    pairs = {
        0: ((0, -1), (0, 1)),
        1: ((1, 1), (-1, -1)),
        2: ((-1, 0), (1, 0)),
        3: ((1, -1), (-1, 1)),
    }
    keep = np.zeros_like(mag, dtype=bool)
    for s, (a, b) in pairs.items():
        m = sector == s
        keep |= m & (mag >= shifted[a]) & (mag >= shifted[b])
    thin = np.where(keep, mag, 0.0)

    strong = thin >= high
    weak = thin >= low
    return _hysteresis(strong, weak)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Weak pixels 8-connected to a strong one (scipy's labelling when present: same result)."""
    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    if ndimage is not None:
        labels, _ = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
        hit = np.unique(labels[strong & weak])
        return np.isin(labels, hit[hit > 0])
    # grow the strong set through 8-connected weak pixels until it stops
    h, w = weak.shape
    edges = strong & weak
    while True:
        q = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                grown |= q[dy : dy + h, dx : dx + w]
        grown &= weak
        if (grown == edges).all():
            return edges
        edges = grown


def canny_image(image: Image.Image, low: float = 100.0, high: float = 200.0) -> Image.Image:
    """The canny control image (white edges on black, RGB) of a PIL image."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    edges = canny(gray, low, high)
    arr = np.repeat((edges.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return Image.fromarray(arr, mode="RGB")
