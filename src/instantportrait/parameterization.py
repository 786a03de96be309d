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
