"""InstantPortrait's annealing identity loss (IDE-Net, §3.1, eqs. 2-5, Table 5, App. G.1).

``L = L_dm + lambda_aid * W_a(t, T_max) * L_cid`` with
``L_cid = || E(g(crop(c_I))) - E(g(crop(x_hat))) ||^2``: E a frozen identity embedder
(L2-normalised embeddings, so ``L_cid = 2 - 2 cos``), g the grayscale op, crop the
differentiable face crop at the input's points (the detector's five keypoints when the row
has them, e.g. SCRFD's or MTCNN's, else dlib's 5 landmarks; docs/training.md, "Faces").
"""

from __future__ import annotations

import math

import torch

ANNEALING_KINDS = ("linear", "linear_offset", "cosine", "cosine_increasing", "constant")


def annealing_weight(
    t: torch.Tensor,
    t_max: float = 999.0,
    kind: str = "linear",
    a: float = 1.0,
    b: float = 0.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """W_a(t, T_max) (InstantPortrait eq. 4 and Table 5's variants).

    ``linear``: t / T_max (default). ``linear_offset``: a t / T_max + b. ``cosine``:
    0.5 alpha (1 + cos(pi t / T_max)) + (1 - alpha). ``cosine_increasing``:
    0.5 alpha (1 - cos(pi t / T_max)) + (1 - alpha). ``constant``: 1 (plain L_cid, the ablation).
    """
    r = t.float() / float(t_max)
    if kind == "linear":
        return r
    if kind == "linear_offset":
        return a * r + b
    if kind == "cosine":
        return 0.5 * alpha * (1.0 + torch.cos(math.pi * r)) + (1.0 - alpha)
    if kind == "cosine_increasing":
        return 0.5 * alpha * (1.0 - torch.cos(math.pi * r)) + (1.0 - alpha)
    if kind == "constant":
        return torch.ones_like(r)
    raise ValueError(f"annealing kind {kind!r}: one of {', '.join(ANNEALING_KINDS)}")


def identity_distance(reference: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """L_cid per sample (InstantPortrait eq. 3): squared L2 distance of embeddings, (B,)."""
    return (reference.float() - predicted.float()).pow(2).sum(dim=-1)


def annealed_identity_loss(
    l_cid: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """W_a * L_cid averaged over the samples with a face (eq. 5's identity term), a scalar."""
    terms = weight.to(l_cid) * l_cid
    if valid is None:
        return terms.mean()
    valid = valid.to(l_cid)
    return (terms * valid).sum() / valid.sum().clamp(min=1.0)


def idenet_loss(l_dm: torch.Tensor, l_aid: torch.Tensor, lambda_aid: float = 0.7) -> torch.Tensor:
    """IDE-Net's objective (InstantPortrait eq. 5): L_dm + lambda_aid * L_aid."""
    return l_dm + lambda_aid * l_aid
