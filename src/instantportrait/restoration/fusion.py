"""Mask-guided face fusion (MGFF) of FPGA's DIIR, Algorithm 1 lines 6 and 8.

Conventions, written down (spec §4.3, gap 6):

* ``AdaIN(x; y) = sigma_y * (x - mu_x) / sigma_x + mu_y`` per sample and channel over the
  spatial positions (Huang & Belongie 2017, eq. 8), ``eps = 1e-5`` inside the square root.
* **composite** (default): ``fused = M * AdaIN(X_R; X_C) + (1 - M) * X_C``: outside the face
  the cached inversion features/latents are taken exactly (background consistency); inside,
  the restoration re-normalised to the cached statistics (colour harmony).
* ``stats_region``: ``global`` (default: statistics over the whole map), ``face`` (masked
  statistics inside M for both), or ``literal`` (the paper's lines as written: statistics of
  ``X_R * M`` and of ``X_C * (1 - M)`` over the whole map, then the same composite).

Features are ``(B, C, H, W)``; masks ``(B, 1, H, W)`` (or ``(1, 1, H, W)``) in ``[0, 1]`` at the
features' resolution (see :func:`resize_mask`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["STATS_REGIONS", "adain", "masked_mean_std", "mgff", "resize_mask"]

StatsRegion = Literal["global", "face", "literal"]
STATS_REGIONS = ("global", "face", "literal")
EPS = 1e-5


def masked_mean_std(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and standard deviation over space, optionally weighted.

    ``weight`` ``(B, 1, H, W)`` weighs every position (a soft mask); ``None`` weighs all
    equally. Returns ``(mean, std)`` each ``(B, C, 1, 1)``; ``std = sqrt(var + eps)``
    (population variance).
    """
    if weight is None:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(-2, -1), keepdim=True)
    else:
        w = weight.to(x.dtype).expand(x.shape[0], 1, *x.shape[-2:])
        total = w.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        mean = (x * w).sum(dim=(-2, -1), keepdim=True) / total
        var = (((x - mean) ** 2) * w).sum(dim=(-2, -1), keepdim=True) / total
    return mean, (var + eps).sqrt()


def adain(
    x: torch.Tensor,
    y: torch.Tensor,
    x_weight: torch.Tensor | None = None,
    y_weight: torch.Tensor | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """AdaIN(x; y) (Huang & Belongie 2017, eq. 8; FPGA Alg. 1): x re-normalised to y's stats.

    ``x_weight``/``y_weight`` restrict where each statistic is measured (soft masks).
    """
    mu_x, sd_x = masked_mean_std(x, x_weight, eps)
    mu_y, sd_y = masked_mean_std(y, y_weight, eps)
    return sd_y * (x - mu_x) / sd_x + mu_y


def mgff(
    restored: torch.Tensor,
    cached: torch.Tensor,
    mask: torch.Tensor,
    stats_region: StatsRegion = "global",
) -> torch.Tensor:
    """Mask-guided face fusion (FPGA Alg. 1, lines 6 and 8; spec §4.3 composite).

    ``M * AdaIN(X_R; X_C) + (1 - M) * X_C`` with the statistics of ``stats_region``.

    Args:
        restored: X_R, the regenerated features or latents ``(B, C, H, W)``.
        cached: X_C, the inversion's cached features or latents, same shape.
        mask: M_B ``(B or 1, 1, H, W)`` in ``[0, 1]``: 1 on the face.
        stats_region: ``global``, ``face`` or ``literal`` (see the module docstring).
    """
    if restored.shape != cached.shape:
        raise ValueError(f"mgff: restored {tuple(restored.shape)} != cached {tuple(cached.shape)}")
    m = mask.to(restored.dtype)
    if stats_region == "global":
        normalised = adain(restored, cached)
    elif stats_region == "face":
        normalised = adain(restored, cached, m, m)
    elif stats_region == "literal":
        normalised = adain(restored * m, cached * (1 - m))
    else:
        raise ValueError(f"stats_region: one of {', '.join(STATS_REGIONS)}, got {stats_region!r}")
    return m * normalised + (1 - m) * cached


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(B, 1, H, W)`` mask resized bilinearly to ``size`` ``(h, w)`` (spec §4.3)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False).clamp(0, 1)
