"""Hinge adversarial losses (InstantPortrait eq. 6; Lim & Ye 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D (InstantPortrait eq. 6): E[max(0, 1 - D(x))] + E[max(0, 1 + D(x_hat))]."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_adv for the student (InstantPortrait eq. 6): -E[D(x_hat)]."""
    return -fake_logits.float().mean()
