"""CodeFormer after DIIR (FPGA spec §4.3 "Optional CodeFormer"; the paper's Table 4).

:class:`CodeFormerEnhancer` is a callable ``list[PIL.Image] -> list[PIL.Image]`` that
:class:`~.restorer.FaceRestorer` applies to the DIIR-restored face crops before pasting them
back (``enhancer=``), so everything outside the paste mask stays bit-identical. Per crop, as
the official ``inference_codeformer.py`` does for an aligned face:

1. resize to the model's input size (512 for the released model; bilinear);
2. scale to [0, 1], then normalise with mean 0.5 and std 0.5 to [-1, 1];
3. run the network with fidelity ``w`` (spec [rec] 0.5) and AdaIN on the looked-up codes;
4. clamp to [-1, 1], map back to [0, 255] (rounded), resize to the crop's own size.

With the face's landmarks (``FaceRestorer`` passes them), each crop is first **aligned** as
CodeFormer was trained: the similarity transform that puts its eye centres, nose tip and
mouth corners on the FFHQ 512 template (``faces.align`` template ``"ffhq"``, facexlib's
``FaceRestoreHelper``), the network runs on that aligned face, and the result is warped back
into the crop and blended through the aligned square's footprint (a 2% linear border), so
crop pixels the aligned square does not cover keep their DIIR values exactly. Without
landmarks (or ``align=False``) the whole crop is resized to the model's input instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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
        align: with landmarks, align each face to the FFHQ template first (default ``True``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        fidelity: float = 0.5,
        *,
        adain: bool = True,
        batch_size: int = 8,
        align: bool = True,
    ) -> None:
        self.model = model
        self.fidelity = check_fidelity(fidelity)
        self.adain = bool(adain)
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.align = bool(align)

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

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The network on ``(B, 3, S, S)`` inputs in [-1, 1], in batches: outputs in [-1, 1]."""
        outs = [
            self.model(x[i : i + self.batch_size], fidelity=self.fidelity, adain=self.adain).sample
            for i in range(0, x.shape[0], self.batch_size)
        ]
        return torch.cat(outs).float().clamp(-1, 1)

    @torch.no_grad()
    def __call__(
        self, images: Sequence[Image.Image], landmarks: Sequence[np.ndarray] | None = None
    ) -> list[Image.Image]:
        """The enhanced crops, each at its own size, in order.

        ``landmarks``: each crop's 68 (or dlib's 5) landmarks in its own pixels; with them the
        faces are aligned to the FFHQ template first (see the module docstring).
        """
        images = list(images)
        if landmarks is not None and self.align:
            if len(landmarks) != len(images):
                raise ValueError(f"landmarks: {len(landmarks)} sets for {len(images)} crops")
            return self._aligned(images, list(landmarks))
        if not images:
            return []
        return self.postprocess(self.run(self.preprocess(images)), [im.size for im in images])

    def _aligned(self, images: list[Image.Image], landmarks: list[np.ndarray]):
        from ..faces.align import crop_faces, crop_matrices

        s = self.size
        p = next(self.model.parameters())
        pixels = [_to_tensor(im) for im in images]
        marks = [torch.as_tensor(np.asarray(lm), dtype=torch.float32)[None] for lm in landmarks]
        aligned = torch.cat(
            [
                crop_faces(t, lm, "ffhq", s, padding_mode="reflection")
                for t, lm in zip(pixels, marks)
            ]
        )
        out = (self.run(((aligned - 0.5) / 0.5).to(p.device, p.dtype)).cpu() + 1) / 2
        footprint = _footprint(s)
        results = []
        for i, (t, lm) in enumerate(zip(pixels, marks)):
            grid = _inverse_grid(crop_matrices(lm, "ffhq", s)[0], t.shape[-2:], s)
            back = F.grid_sample(out[i : i + 1], grid, mode="bilinear", align_corners=False)
            weight = F.grid_sample(footprint, grid, mode="bilinear", align_corners=False)
            blended = weight * back + (1 - weight) * t
            arr = (blended[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            results.append(Image.fromarray(arr.numpy()))
        return results


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """``(1, 3, H, W)`` float in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def _footprint(size: int, border: float = 0.02) -> torch.Tensor:
    """``(1, 1, S, S)``: 1 inside the aligned square, falling linearly to 0 over its outer
    ``border`` (a fraction of the side), so the warped-back face blends without a seam."""
    ramp = max(1.0, border * size)
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    edge = torch.minimum(centres, size - centres) / ramp
    a = edge.clamp(0, 1)
    return (a[:, None] * a[None, :])[None, None]


def _inverse_grid(aligned_to_crop: torch.Tensor, hw: tuple[int, int], size: int) -> torch.Tensor:
    """``grid_sample`` grid ``(1, H, W, 2)`` that reads, for every crop pixel, the aligned
    image's pixel it came from (the inverse of the ``(2, 3)`` aligned -> crop map)."""
    h, w = int(hw[0]), int(hw[1])
    last = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    full = torch.cat([aligned_to_crop.double(), last])
    inv = torch.linalg.inv(full)[:2].float()
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    pts = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(-1, 3)
    uv = pts @ inv.T  # aligned pixel-centre coordinates
    return ((uv + 0.5) * (2.0 / size) - 1.0).reshape(1, h, w, 2)


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
