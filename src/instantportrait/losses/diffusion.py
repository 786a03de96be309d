"""The denoising loss of latent diffusion / InstructPix2Pix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_target(
    noise: torch.Tensor, z0: torch.Tensor, ab: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The regression target: epsilon, or v = sqrt(ab) eps - sqrt(1-ab) z0 (Salimans & Ho 2022)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return ab.sqrt() * noise - (1.0 - ab).sqrt() * z0
    raise ValueError(f"prediction_type {prediction_type!r}: epsilon or v_prediction")


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_dm (InstructPix2Pix, Brooks et al. 2023, eq. 2): per-sample mean squared error, (B,)."""
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
