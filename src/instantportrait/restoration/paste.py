"""The DIIR face crop and the paste-back through the smoothed face mask (FPGA spec §4.1, §4.3).

* :func:`face_crop_box`: a square of ``scale`` (default 2) times the face box's longer side,
  centred on the face box; it may extend past the image (the outside reads as black and is
  never pasted back).
* :func:`crop_face`: that square, resized to the DIIR resolution (512 for SD1.5).
* :func:`paste_back`: the restored crop resized to the square's pixel size and alpha-blended
  into the image with the feathered face mask: ``out = M * restored + (1 - M) * image``. Pixels
  where ``M == 0`` (everything outside the mask, and outside the square) keep their exact
  input values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["CropBox", "crop_face", "face_crop_box", "paste_back"]


@dataclass(frozen=True)
class CropBox:
    """An integer square ``(x0, y0)`` + ``side`` in image pixels (may extend past the image)."""

    x0: int
    y0: int
    side: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x0 + self.side, self.y0 + self.side)

    def to_crop(self, points: np.ndarray | torch.Tensor, resolution: int) -> np.ndarray:
        """Image pixel-centre coordinates -> coordinates in the crop resized to ``resolution``."""
        p = np.asarray(points, dtype=np.float64)
        scale = resolution / self.side
        return (p - np.array([self.x0, self.y0]) + 0.5) * scale - 0.5


def face_crop_box(box: np.ndarray | torch.Tensor | tuple, scale: float = 2.0) -> CropBox:
    """The square crop of ``scale`` times the longer side of ``box`` ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(8, int(round(max(x1 - x0, y1 - y0) * scale)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return CropBox(int(round(cx - side / 2)), int(round(cy - side / 2)), side)


def crop_face(image: Image.Image, crop: CropBox, resolution: int) -> Image.Image:
    """I_Bro: the square ``crop`` of ``image`` resized to ``resolution`` (bicubic)."""
    return image.crop(crop.box).resize((resolution, resolution), Image.BICUBIC)


def paste_back(
    image: Image.Image,
    restored: Image.Image,
    crop: CropBox,
    mask: torch.Tensor | np.ndarray,
) -> Image.Image:
    """Blend ``restored`` into ``image`` at ``crop`` through ``mask`` (spec §4.3 paste back).

    Args:
        image: the full image (RGB).
        restored: the restored crop (any size; resized to ``crop.side``).
        crop: where the crop came from.
        mask: the feathered face mask ``(side, side)`` (or ``(1, 1, side, side)``) in ``[0, 1]``
            at the crop's pixel size.
    """
    m = torch.as_tensor(mask).detach().float().cpu().reshape(crop.side, crop.side).numpy()
    w, h = image.size
    x0, y0, x1, y1 = crop.box
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out = np.array(image.convert("RGB"))
    if ix0 >= ix1 or iy0 >= iy1:
        return Image.fromarray(out)
    patch = np.asarray(
        restored.convert("RGB").resize((crop.side, crop.side), Image.BICUBIC), dtype=np.float64
    )
    sy, sx = slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)
    alpha = m[sy, sx, None].astype(np.float64)
    region = out[iy0:iy1, ix0:ix1].astype(np.float64)
    blended = alpha * patch[sy, sx] + (1.0 - alpha) * region
    inside = alpha[..., 0] > 0
    target = out[iy0:iy1, ix0:ix1]
    target[inside] = np.clip(np.rint(blended[inside]), 0, 255).astype(np.uint8)
    return Image.fromarray(out)
