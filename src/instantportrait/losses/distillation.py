"""Identity distillation of IPNet (InstantPortrait §3.2.2, eqs. 7-10).

The student's clean latent z_hat_phi is re-noised to ``z_t' = sqrt(abar_t) z_hat_phi +
sqrt(1 - abar_t) eps`` (eq. 8) with

* ``eps ~ N(0, I)`` when ``t > tau`` (score distillation, L_sds), and
* ``eps = eps_hat_theta(z_hat_phi, t)``, the teacher's own prediction, when ``t <= tau``
  (eq. 9: one DDIM-inversion step from the clean latent straight to ``t``);

the frozen teacher predicts ``x_hat_theta(stopgrad(z_t'))`` and the student regresses it,
``|| x_hat_theta - x_hat_phi ||^2`` (eq. 10), in pixel space (default) or latent space.

:func:`ddim_inversion` is the full multi-step alternative: it walks from z_hat_phi up to
``t`` in K DDIM steps, re-evaluating the teacher at every intermediate timestep, so
``z_t'`` follows the teacher's deterministic ODE trajectory rather than eq. 9's single
extrapolation from the clean latent; it costs K teacher evaluations instead of one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..parameterization import add_noise, alpha_bar, predict_epsilon, predict_x0

#: ``teacher(z_t, t) -> model output`` (the teacher's guided UNet output at ``t``)
TeacherFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def renoise_epsilon(
    random_noise: torch.Tensor, inversion_noise: torch.Tensor, t: torch.Tensor, tau: int
) -> torch.Tensor:
    """Eqs. 8-9 per sample: the teacher's epsilon where t <= tau, random noise elsewhere."""
    use_inversion = (t <= tau).view(-1, *([1] * (random_noise.ndim - 1)))
    return torch.where(use_inversion, inversion_noise, random_noise)


def ddim_inversion(
    teacher: TeacherFn,
    z0: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    num_steps: int = 4,
) -> torch.Tensor:
    """Deterministic DDIM inversion from the clean latent ``z0`` up to timestep ``t`` in K steps.

    Returns the latent at ``t``. Timesteps are spaced evenly in (0, t]; each step applies
    the DDIM update ``z_next = sqrt(abar_next) x0(z) + sqrt(1 - abar_next) eps(z)`` with the
    teacher's prediction at the current point (Song et al. 2021, eq. 12 with sigma = 0, run
    backwards).
    """
    z = z0
    t = t.long()
    current = torch.zeros_like(t)
    for k in range(1, num_steps + 1):
        nxt = (t.float() * k / num_steps).round().long().clamp(min=1)
        ab_cur = alpha_bar(alphas_cumprod, current, z)
        if k == 1:
            # at the clean latent there is no noise yet: evaluate the teacher at the first step
            eps = predict_epsilon(
                teacher(z, nxt), z, alpha_bar(alphas_cumprod, nxt, z), prediction_type
            )
            x0 = z
        else:
            out = teacher(z, current)
            eps = predict_epsilon(out, z, ab_cur, prediction_type)
            x0 = predict_x0(out, z, ab_cur, prediction_type)
        z = add_noise(x0, eps, alpha_bar(alphas_cumprod, nxt, z))
        current = nxt
    return z


def distillation_loss(student: torch.Tensor, teacher_target: torch.Tensor) -> torch.Tensor:
    """L_distill (InstantPortrait eq. 10): || x_hat_theta - x_hat_phi ||^2, mean over elements."""
    return F.mse_loss(student.float(), teacher_target.detach().float())
