"""FastFace's attention-map transforms (Karpukhin et al. 2025, eqs. 8-10), as pure functions.

The map ``A = softmax(Q K'^T / sqrt(d))`` of IP-Adapter's ID branch, AM1's scale-power
(eq. 8), AM2's scheduled soft mask (eq. 9) and its AdaIN blends (eq. 10), with the official
code's semantics (spec §8 D2-D6). :mod:`instantportrait.attention` holds the presets, the
schedule and the diffusers processor that apply them. The functions work in place on maps
they own and stay within float rounding of a plain implementation (``torch.quantile``,
``torch.std``): ``tests/fastface/test_fastface_am2_fast.py`` compares them.
"""

from __future__ import annotations

import torch

__all__ = ["attention_probabilities", "scale_power", "scheduled_soft_mask"]


def attention_probabilities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``softmax(Q K^T / sqrt(d))`` over the keys (FastFace eq. 7's A): (B, H, L, S).

    Token-major in memory (a transposed view of a contiguous (B, H, S, L)): the softmax over
    the few ID tokens and AM2's per-token reductions over the queries then run along
    contiguous memory (a softmax over a last axis of 4 is ~15x slower on CPU).
    """
    scale = query.shape[-1] ** -0.5
    return torch.softmax(key @ query.transpose(-1, -2) * scale, dim=-2).transpose(-1, -2)


def scale_power(attn: torch.Tensor, power: float, scale: float, clamp_max: float) -> torch.Tensor:
    """FastFace eq. 8, AM1: ``min(s A^p, clamp_max)`` (power first, then scale, code order)."""
    return torch.clamp(scale * attn.pow(power), max=clamp_max)


def _minmax_(x: torch.Tensor, eps: float) -> torch.Tensor:
    """FastFace eq. 9's ``nrm``, in place: min-max per token over (batch, heads, queries).

    ``(x - min) / (max - min + eps)``; min and max come from one ``aminmax`` pass along the
    queries (contiguous in a token-major ``x``), then over batch and heads; eps keeps a
    constant map finite. ``x`` is owned by the caller.
    """
    lo, hi = torch.aminmax(x, dim=2, keepdim=True)
    lo, hi = lo.amin(dim=(0, 1), keepdim=True), hi.amax(dim=(0, 1), keepdim=True)
    return x.sub_(lo).div_(hi.sub_(lo).add_(eps))


def _quantile_over_queries(x: torch.Tensor, q: float) -> torch.Tensor:
    """FastFace eq. 9's ``Q_q(A)`` along the queries (dim 2), kept as a size-1 axis.

    The value of ``torch.quantile(x, q, dim=2, keepdim=True)`` (linear interpolation at rank
    ``q (L - 1)``, the rank computed in ``x``'s dtype as torch does) from two ``kthvalue``
    selections, the order statistics just below and above the rank, instead of a full sort.
    No input-size limit (``torch.quantile`` refuses more than 2**24 elements).
    """
    rank = torch.tensor(q, dtype=x.dtype) * (x.shape[2] - 1)
    below = int(rank)
    weight = float(rank - below)
    low = x.kthvalue(below + 1, dim=2, keepdim=True).values
    if weight == 0:
        return low
    high = x.kthvalue(below + 2, dim=2, keepdim=True).values
    return torch.lerp(low, high, weight)


def _mean_std(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, ``x - mean`` and the unbiased std along ``dim`` (AdaIN's statistics, eq. 10).

    Two passes by hand: ``torch.std`` over a short innermost axis is ~10x slower on CPU; the
    values agree with it to float rounding.
    """
    mean = x.mean(dim, keepdim=True)
    centred = x - mean
    var = (centred * centred).sum(dim, keepdim=True).div_(x.shape[dim] - 1)
    return mean, centred, var.sqrt_()


def _adain(x: torch.Tensor, ref: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """FastFace eq. 10's AdaIN: ``x`` normalised along ``dim``, re-modulated with ``ref``'s
    mean and std: ``(x - mean_x) std_ref / (std_x + eps) + mean_ref``."""
    _, centred, std = _mean_std(x, dim)
    ref_mean, _, ref_std = _mean_std(ref, dim)
    return centred.mul_(ref_std).div_(std.add_(eps)).add_(ref_mean)


def _adain_blend(x: torch.Tensor, ref: torch.Tensor, weight: float, eps: float) -> torch.Tensor:
    """FastFace eq. 10's blend over the last axis: ``w x + (1 - w) AdaIN(x; ref)`` (new tensor)."""
    return _adain(x, ref, dim=-1, eps=eps).mul_(1 - weight).add_(x * weight)


def _unless_nan(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``x``, or ``fallback`` when ``x`` has a NaN anywhere (the code skips a NaN AdaIN).

    ``amax`` propagates NaN, so one reduction decides (a full-size ``isnan``, ``any`` and
    ``where`` cost more than the AdaIN itself on CPU). On CPU the choice is made on the host,
    with no sync to pay; on other devices on device, without a host sync.
    """
    has_nan = x.amax().isnan()
    if x.device.type == "cpu":
        return fallback if has_nan else x
    return torch.where(has_nan, fallback, x)


def scheduled_soft_mask(
    attn: torch.Tensor,
    sharpness: float,
    quantile: float,
    scale: float,
    *,
    invert_first_token: bool = True,
    clamp_max: float = 10.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """FastFace eq. 9, AM2's map with the code's semantics: ``s nrm(sigmoid(d (nrm(A) - Q_q(A))))``.

    ``attn`` is (B, H, L, S). Token 0 is inverted (``1 - A``) before and back
    (``max_L - x``) after when ``invert_first_token``. The quantile is taken along the queries on
    the (inverted) map itself and clamped at 1e-6; ``nrm`` is min-max per token over
    (batch, heads, queries). Spec §8 D2-D5. One working copy of the map, token-major in
    memory (see :func:`attention_probabilities`), updated in place.
    """
    a = attn.transpose(-1, -2).clone(memory_format=torch.contiguous_format).transpose(-1, -2)
    if invert_first_token:
        a[..., 0].neg_().add_(1)
    level = _quantile_over_queries(a, quantile).clamp_(min=1e-6)
    soft = _minmax_(a, eps).sub_(level).mul_(sharpness).sigmoid_()
    out = _minmax_(soft, eps).mul_(scale).clamp_(max=clamp_max)
    if invert_first_token:
        first = out[..., 0]
        first.sub_(first.amax(dim=-1, keepdim=True)).neg_()  # max_L - x, exactly
    return out
