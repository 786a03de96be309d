"""The diffusion parameterisation, kept apart from networks and samplers.

Variance-preserving forward process ``z_t = sqrt(abar_t) * z_0 + sqrt(1 - abar_t) * eps`` and
the conversions between the network's output (epsilon or v) and the clean latent. These
small functions serve the one-step editor, the identity losses and the distillation.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def alpha_bar(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor | int, like: torch.Tensor
) -> torch.Tensor:
    """``abar_t`` gathered at integer ``timesteps`` and shaped to broadcast against ``like``."""
    t = torch.as_tensor(timesteps, device=alphas_cumprod.device).long().reshape(-1)
    ab = alphas_cumprod[t].to(device=like.device, dtype=like.dtype)
    return ab.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(z0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Forward process q(z_t | z_0) (DDPM, Ho et al. 2020, eq. 4)."""
    return ab.sqrt() * z0 + (1.0 - ab).sqrt() * noise


def predict_x0(
    model_output: torch.Tensor, sample: torch.Tensor, ab: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Clean latent from the network output (DDPM eq. 15 for epsilon; Salimans & Ho 2022 for v)."""
    if prediction_type == "epsilon":
        return (sample - (1.0 - ab).sqrt() * model_output) / ab.sqrt()
    if prediction_type == "v_prediction":
        return ab.sqrt() * sample - (1.0 - ab).sqrt() * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type {prediction_type!r}: one of {', '.join(PREDICTION_TYPES)}")


def predict_epsilon(
    model_output: torch.Tensor, sample: torch.Tensor, ab: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Noise from the network output (the inverse of :func:`add_noise` given x0)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return (1.0 - ab).sqrt() * sample + ab.sqrt() * model_output
    if prediction_type == "sample":
        return (sample - ab.sqrt() * model_output) / (1.0 - ab).sqrt()
    raise ValueError(f"prediction_type {prediction_type!r}: one of {', '.join(PREDICTION_TYPES)}")


# ---------------------------------------------------------------- rectified flow (DiT editors)
#
# FLUX.1 Kontext and Qwen-Image-Edit are flow-matching models: x_sigma = (1 - sigma) x0 +
# sigma eps with sigma in [0, 1], and the network predicts the velocity v = eps - x0.


def flow_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Rectified-flow forward process ``x_sigma = (1 - sigma) x0 + sigma eps`` (Liu et al.
    2022; Esser et al. 2024 (SD3) eq. 3 with a_t = 1 - t, b_t = t)."""
    return (1.0 - sigma) * x0 + sigma * noise


def flow_velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity a flow-matching model learns, ``v = eps - x0`` (the derivative of
    :func:`flow_noise` in sigma)."""
    return noise - x0


def flow_x0(x_sigma: torch.Tensor, sigma: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """Clean sample from a velocity, ``x0_hat = x_sigma - sigma v_hat`` (inverts
    :func:`flow_noise` given :func:`flow_velocity_target`)."""
    return x_sigma - sigma * v


def flow_eps(x_sigma: torch.Tensor, sigma: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """Noise from a velocity, ``eps_hat = x_sigma + (1 - sigma) v_hat``."""
    return x_sigma + (1.0 - sigma) * v


def sigma_from_timestep(t: torch.Tensor | int | float) -> torch.Tensor:
    """InstantPortrait's integer timestep ``t`` in [0, 999] as a flow ``sigma = t / 1000``
    (our mapping: the stages' t ranges become sigma ranges, tau = 200 becomes 0.2)."""
    return torch.as_tensor(t, dtype=torch.float32) / 1000.0
