"""Classifier-free guidance rules, each one small function.

Also FastFace's decoupled classifier-free guidance (DCG, Karpukhin et al. 2025, eqs. 5-6 and
16-18), its per-step alpha/beta schedules and its std-rescaling.
"""

from __future__ import annotations

from collections.abc import Sequence

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


#: FastFace's DCG variants by the paper's names (eqs. 16, 17, 18). The official code numbers
#: them differently: its ``dcg_type`` 1 = DCG_1, 2 = DCG_3, 3 = DCG_2 (spec §8, D9).
DCG_VARIANTS = ("dcg1", "dcg2", "dcg3")
#: What the two non-null branches of each variant are, as (text, id) conditions.
DCG_BRANCHES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "dcg1": (("c_text", "null"), ("c_text", "c_id")),
    "dcg2": (("null", "c_id"), ("c_text", "c_id")),
    "dcg3": (("c_text", "null"), ("null", "c_id")),
}
#: FastFace's published schedules over its 4 steps (§4.2 / code configs).
DCG_ALPHA_SCHEDULE = (1.0, 1.5, 1.5, 1.0)
DCG_BETA_SCHEDULE = (1.0, 3.0, 3.0, 1.0)
#: The rescale strength phi of eq. 6, the same for every checkpoint.
DCG_RESCALE_PHI = 0.75


def dcg1(eps_null, eps_text, eps_text_id, alpha: float, beta: float) -> torch.Tensor:
    """FastFace eq. 16: e(0,0) + a (e(c_t,0) - e(0,0)) + b (e(c_t,c_id) - e(c_t,0))."""
    return eps_null + alpha * (eps_text - eps_null) + beta * (eps_text_id - eps_text)


def dcg2(eps_null, eps_id, eps_text_id, alpha: float, beta: float) -> torch.Tensor:
    """FastFace eqs. 5 / 17: e(0,0) + a (e(0,c_id) - e(0,0)) + b (e(c_t,c_id) - e(0,c_id))."""
    return eps_null + alpha * (eps_id - eps_null) + beta * (eps_text_id - eps_id)


def dcg3(eps_null, eps_text, eps_id, alpha: float, beta: float) -> torch.Tensor:
    """FastFace eq. 18: e(0,0) + a (e(c_t,0) - e(0,0)) + b (e(0,c_id) - e(0,0))."""
    return eps_null + alpha * (eps_text - eps_null) + beta * (eps_id - eps_null)


def _per_sample_std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std over every axis but the batch, kept broadcastable (torch.std's default)."""
    return x.std(dim=tuple(range(1, x.ndim)), keepdim=True)


def dcg_rescale(
    eps_dcg: torch.Tensor, eps_1: torch.Tensor, eps_2: torch.Tensor, phi: float
) -> torch.Tensor:
    """FastFace eq. 6: phi (s_1 + s_2) / (2 s_dcg) e_dcg + (1 - phi) e_dcg, per sample.

    ``s_1``, ``s_2`` are the stds of the two non-null *predictions* ``eps_1``, ``eps_2`` (as the
    official code takes them, spec D7), ``s_dcg`` that of the guided prediction; unbiased,
    over (C, H, W).
    """
    factor = (_per_sample_std(eps_1) + _per_sample_std(eps_2)) / (2 * _per_sample_std(eps_dcg))
    return eps_dcg * (phi * factor + (1.0 - phi))


def decoupled_guidance(
    eps_null: torch.Tensor,
    eps_1: torch.Tensor,
    eps_2: torch.Tensor,
    alpha: float,
    beta: float,
    variant: str = "dcg2",
    rescale: float | None = None,
) -> torch.Tensor:
    """FastFace's decoupled classifier-free guidance (eqs. 16-18) with optional rescale (eq. 6).

    Args:
        eps_null: e(0, 0), no text and no identity.
        eps_1, eps_2: the variant's two other branches (:data:`DCG_BRANCHES`): ``dcg1``:
            e(c_text, 0), e(c_text, c_id); ``dcg2`` (the method): e(0, c_id), e(c_text, c_id);
            ``dcg3``: e(c_text, 0), e(0, c_id).
        alpha: the first term's strength (the identity guidance for ``dcg2``) at this step.
        beta: the second term's strength (the text guidance for ``dcg2``) at this step.
        variant: ``dcg1``, ``dcg2`` or ``dcg3``.
        rescale: phi of eq. 6 (FastFace uses 0.75 at every step); ``None``: no rescale.
    """
    rules = {"dcg1": dcg1, "dcg2": dcg2, "dcg3": dcg3}
    if variant not in rules:
        raise ValueError(f"variant {variant!r}: one of {', '.join(DCG_VARIANTS)}")
    guided = rules[variant](eps_null, eps_1, eps_2, alpha, beta)
    if rescale is not None:
        guided = dcg_rescale(guided, eps_1, eps_2, rescale)
    return guided


def step_schedule(
    values: Sequence[float], num_steps: int, *, keep_last: bool = True
) -> list[float]:
    """A per-step schedule given for 4 steps, stretched to ``num_steps`` (spec §7, item 9).

    The first and last values are kept at the first and last step; every intermediate step
    takes the plateau (the schedule's second value); with ``keep_last=False`` (AM's d and s)
    the plateau runs through the last step. ``len(values) == num_steps`` returns it as it is.
    The schedule is indexed by step, not by timestep (§2.3).
    """
    values = [float(v) for v in values]
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if len(values) == num_steps:
        return values
    if num_steps == 1:
        return [values[0]]
    plateau = values[1] if len(values) > 2 else values[-1]
    if not keep_last:
        return [values[0]] + [plateau] * (num_steps - 1)
    return [values[0]] + [plateau] * (num_steps - 2) + [values[-1]]
