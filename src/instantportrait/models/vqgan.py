"""The VQGAN of CodeFormer (Zhou et al., NeurIPS 2022; after Esser et al.'s VQGAN): encoder,
codebook and generator, with the module names of the official checkpoint.

Each network is one flat ``blocks`` list, as ``codeformer.pth`` stores it (``encoder.blocks.N``,
``generator.blocks.N``), built from a configuration dict (see
:class:`~.codeformer.CodeFormer`): a stem convolution; per level ``num_res_blocks`` residual
blocks (with spatial attention on the levels of ``attention_resolutions``) and a resampling
step; a middle of residual + attention + residual; GroupNorm and an output convolution (no
activation between them, as in the official code). Written for this project from reading the
official ``basicsr/archs/vqgan_arch.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttnBlock",
    "Downsample",
    "ResBlock",
    "Upsample",
    "VQEncoder",
    "VQGenerator",
    "VectorQuantizer",
]


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """Pre-activation residual block (GroupNorm, swish, 3×3 conv, twice); 1×1 skip on a width
    change (``conv_out``)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_out = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1-conv projections and a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one pixel on the right and bottom."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2, then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class VQEncoder(nn.Module):
    """The VQGAN encoder: one flat ``blocks`` list, as the checkpoint stores it.

    ``taps[resolution]`` is the index of the block whose output is ``F_e`` at that resolution:
    the last residual block of the level.
    """

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        nf, mults, g = cfg["base_channels"], cfg["channel_multipliers"], cfg["norm_groups"]
        blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, padding=1)]
        self.taps: dict[int, int] = {}
        ch, res = nf, cfg["image_size"]
        for level, mult in enumerate(mults):
            for _ in range(cfg["num_res_blocks"]):
                blocks.append(ResBlock(ch, nf * mult, g))
                ch = nf * mult
                self.taps[res] = len(blocks) - 1
                if res in cfg["attention_resolutions"]:
                    blocks.append(AttnBlock(ch, g))
            if level != len(mults) - 1:
                blocks.append(Downsample(ch))
                res //= 2
        blocks += [ResBlock(ch, ch, g), AttnBlock(ch, g), ResBlock(ch, ch, g)]
        blocks += [_group_norm(ch, g), nn.Conv2d(ch, cfg["codebook_dim"], 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)


class VQGenerator(nn.Module):
    """The VQGAN decoder (``generator`` in the checkpoint).

    ``taps[resolution]`` is where the CFT fuses at that resolution: after the level's first
    residual block, or its last one on a level with attention (the official ``16: 6``).
    """

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        nf, mults, g = cfg["base_channels"], cfg["channel_multipliers"], cfg["norm_groups"]
        ch = nf * mults[-1]
        res = cfg["image_size"] // 2 ** (len(mults) - 1)
        blocks: list[nn.Module] = [nn.Conv2d(cfg["codebook_dim"], ch, 3, padding=1)]
        blocks += [ResBlock(ch, ch, g), AttnBlock(ch, g), ResBlock(ch, ch, g)]
        self.taps: dict[int, int] = {}
        for level in reversed(range(len(mults))):
            attn = res in cfg["attention_resolutions"]
            for j in range(cfg["num_res_blocks"]):
                blocks.append(ResBlock(ch, nf * mults[level], g))
                ch = nf * mults[level]
                if j == 0 or attn:
                    self.taps[res] = len(blocks) - 1
                if attn:
                    blocks.append(AttnBlock(ch, g))
            if level != 0:
                blocks.append(Upsample(ch))
                res *= 2
        blocks += [_group_norm(ch, g), nn.Conv2d(ch, 3, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)


class VectorQuantizer(nn.Module):
    """The learned codebook: ``embedding.weight`` is ``(codebook_size, codebook_dim)``."""

    def __init__(self, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, codebook_dim)

    def lookup(self, indices: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
        """Codes of ``indices`` ``(B, h*w)`` as a ``(B, C, h, w)`` feature map."""
        codes = self.embedding(indices)
        return codes.reshape(indices.shape[0], *side, -1).permute(0, 3, 1, 2).contiguous()
