"""The face-style triplet loss (InstantPortrait eqs. 11-12)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def face_style_distances(
    f_input: torch.Tensor, f_output: torch.Tensor, f_target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d1, d2) of InstantPortrait eq. 11: d1 = ||F(c_I) - F(x_hat)||, d2 = ||F(x) - F(x_hat)||."""
    d1 = (f_input.float() - f_output.float()).norm(dim=-1)
    d2 = (f_target.float() - f_output.float()).norm(dim=-1)
    return d1, d2


def face_style_triplet_loss(
    f_input: torch.Tensor,
    f_output: torch.Tensor,
    f_target: torch.Tensor,
    margin: float = 0.15,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_triplet (InstantPortrait eq. 12): mean of max(d2 - d1 - m, 0) over samples with a face.

    The output's face should look like the target's style (small d2) more than like the
    input's (large d1), by a margin ``m`` (0.15).
    """
    d1, d2 = face_style_distances(f_input, f_output, f_target)
    terms = F.relu(d2 - d1 - margin)
    if valid is None:
        return terms.mean()
    v = valid.to(terms)
    return (terms * v).sum() / v.sum().clamp(min=1.0)
