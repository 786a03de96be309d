"""Classifier-free guidance rules, each one small function.

FastFace's decoupled guidance variants and schedules will live here too (DESIGN.md).
"""

from __future__ import annotations

import torch


def classifier_free_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): uncond + s (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def instruct_pix2pix_guidance(
    full: torch.Tensor,
    image_only: torch.Tensor,
    uncond: torch.Tensor,
    text_scale: float,
    image_scale: float,
) -> torch.Tensor:
    """Text + image guidance (InstructPix2Pix, Brooks et al. 2023, eq. 3).

    ``e(0,0) + s_I (e(c_I,0) - e(0,0)) + s_T (e(c_I,c_T) - e(c_I,0))`` where ``full`` is
    ``e(c_I, c_T)``, ``image_only`` is ``e(c_I, 0)`` and ``uncond`` is ``e(0, 0)``.
    """
    return uncond + image_scale * (image_only - uncond) + text_scale * (full - image_only)


def needs_three_branches(text_scale: float, image_scale: float) -> bool:
    """With both scales 1 the rule above reduces to ``full``: one UNet branch suffices."""
    return text_scale != 1.0 or image_scale != 1.0
