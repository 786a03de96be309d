"""What every rectified-flow backbone (FLUX.1 Kontext, Qwen-Image-Edit) shares: the clean
latents and the noise from a velocity, the trainable module, the scheduler's shift ``mu``.

The backbones differ in how they encode and call their transformer; once a velocity is
predicted, ``x_sigma = (1 - sigma) x0 + sigma eps`` gives the rest the same way for both."""

from __future__ import annotations

from typing import Any

import torch

from ..parameterization import flow_eps, flow_x0

__all__ = ["RectifiedFlowBackbone", "flux_shift_mu", "per_row", "scheduler_shift_mu"]


def flux_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The resolution-dependent timestep shift ``mu``, linear in the number of image tokens
    (Esser et al. 2024 (SD3) §5.3.2, as FLUX's and Qwen-Image's scheduler configs set it)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def scheduler_shift_mu(image_seq_len: int, config: dict[str, Any]) -> float:
    """:func:`flux_shift_mu` with a scheduler config's sequence lengths and shifts (FLUX's
    defaults where the config leaves one out)."""
    return flux_shift_mu(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )


def per_row(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a number or one per row) shaped to broadcast over ``like``'s rows."""
    s = torch.as_tensor(sigma, device=like.device, dtype=like.dtype).reshape(-1)
    return s.reshape(-1, *([1] * (like.ndim - 1)))


class RectifiedFlowBackbone:
    """The velocity-parameterised outputs of a rectified-flow backbone (``transformer`` is the
    subclass's)."""

    transformer: torch.nn.Module

    @staticmethod
    def x0(x_sigma: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x0_hat = x_sigma - sigma v_hat``."""
        return flow_x0(x_sigma, per_row(sigma, x_sigma), v)

    @staticmethod
    def eps(x_sigma: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``eps_hat = x_sigma + (1 - sigma) v_hat``."""
        return flow_eps(x_sigma, per_row(sigma, x_sigma), v)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """What a trainer may adapt (LoRA on the transformer; encoders and VAE stay frozen)."""
        return {"transformer": self.transformer}
