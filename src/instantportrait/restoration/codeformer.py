"""CodeFormer after DIIR (FPGA spec §4.3 "Optional CodeFormer"; the paper's Table 4).

:class:`CodeFormerEnhancer` is a callable ``list[PIL.Image] -> list[PIL.Image]`` that
:class:`~.restorer.FaceRestorer` applies to the DIIR-restored face crops before pasting them
back (``enhancer=``), so everything outside the paste mask stays bit-identical. Per crop, as
the official ``inference_codeformer.py`` does for an aligned face:

1. resize to the model's input size (512 for the released model; bilinear);
2. scale to [0, 1], then normalise with mean 0.5 and std 0.5 to [-1, 1];
3. run the network with fidelity ``w`` (spec [rec] 0.5) and AdaIN on the looked-up codes;
4. clamp to [-1, 1], map back to [0, 255] (rounded), resize to the crop's own size.

The crops are DIIR's (a square of 2× the face box, centred on it): roughly the face scale of
CodeFormer's FFHQ-aligned input, but not rotated to its canonical eye line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

__all__ = ["CodeFormerEnhancer", "check_fidelity", "load_codeformer_enhancer"]


def check_fidelity(value: float, name: str = "fidelity") -> float:
    """``value`` as a float in [0, 1], else one :class:`InputError` line naming ``name``."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= w <= 1.0:
        raise InputError(f"{name}: must be in [0, 1], got {value!r}")
    return w


class CodeFormerEnhancer:
    """Enhance face crops with CodeFormer at fidelity ``w``.

    Args:
        model: a :class:`~..models.codeformer.CodeFormer` (its device and dtype are used).
        fidelity: the CFT weight ``w`` in [0, 1] (0: quality, 1: fidelity; default 0.5).
        adain: re-normalise the looked-up codes to the input's features (official: on).
        batch_size: crops per forward pass.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        fidelity: float = 0.5,
        *,
        adain: bool = True,
        batch_size: int = 8,
    ) -> None:
        self.model = model
        self.fidelity = check_fidelity(fidelity)
        self.adain = bool(adain)
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)

    @property
    def name(self) -> str:
        """How notes call it: ``CodeFormer (w=0.5)``."""
        return f"CodeFormer (w={self.fidelity:g})"

    @property
    def size(self) -> int:
        """The model's input side in pixels."""
        return int(self.model.config.image_size)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(B, 3, S, S)`` in [-1, 1] on the model's device and dtype."""
        s = self.size
        arrays = [
            np.asarray(im.convert("RGB").resize((s, s), Image.BILINEAR), dtype=np.float32)
            for im in images
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        x = (x - 0.5) / 0.5
        p = next(self.model.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    @staticmethod
    def postprocess(sample: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Image.Image]:
        """Network outputs in [-1, 1] -> RGB images resized to ``sizes`` (bicubic)."""
        x = (sample.detach().float().clamp(-1, 1) + 1) / 2
        arrays = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for arr, size in zip(arrays, sizes):
            im = Image.fromarray(arr)
            out.append(im if im.size == tuple(size) else im.resize(tuple(size), Image.BICUBIC))
        return out

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The enhanced crops, each at its own size, in order."""
        images = list(images)
        out: list[Image.Image] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            sample = self.model(
                self.preprocess(chunk), fidelity=self.fidelity, adain=self.adain
            ).sample
            out += self.postprocess(sample, [im.size for im in chunk])
        return out


def load_codeformer_enhancer(
    path: str | os.PathLike,
    fidelity: float = 0.5,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> CodeFormerEnhancer:
    """A :class:`CodeFormerEnhancer` on the weights at ``path`` (``codeformer.pth`` or a
    ``save_pretrained`` folder); the fidelity is checked before anything is loaded."""
    from ..models.codeformer import load_codeformer

    w = check_fidelity(fidelity)
    return CodeFormerEnhancer(load_codeformer(path, device=device, dtype=dtype), w)
