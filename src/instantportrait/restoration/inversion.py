"""Deterministic DDIM inversion that caches latents and self-attention features per step.

FPGA Algorithm 1 line 2: ``Z_hat, SA^C = DDIMInversion(Z_hat_0)``. Spec §4.3: the same model,
prompt, F_id and landmark condition as the regeneration, CFG 1, and the standard update

    z_{t_next} = sqrt(abar_next) * x0_hat(z, eps) + sqrt(1 - abar_next) * eps,
    x0_hat     = (z - sqrt(1 - abar_cur) * eps) / sqrt(abar_cur),

where eps is predicted at the current latent with the *next* (higher) timestep, so that the
features captured for timestep ``t`` are those of a UNet call at ``t``, the call the
regeneration makes at the same ``t`` (Mokady et al. 2023's inversion; Song et al. 2021 eq. 13
run backwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .attention import SelfAttentionStore

__all__ = ["InversionCache", "ddim_inversion", "ddim_inversion_step", "ddim_step"]

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class InversionCache:
    """What the inversion keeps: ``latents[t]`` (Z_hat at each sampling timestep t, plus the
    clean ``latents[-1]`` = Z_hat_0) and the self-attention features in ``store``."""

    latents: dict[int, torch.Tensor]
    timesteps: list[int]
    store: SelfAttentionStore

    @property
    def noisiest(self) -> torch.Tensor:
        """Z_hat_T, the starting latent of the regeneration (Algorithm 1 line 3)."""
        return self.latents[self.timesteps[0]]

    def previous(self, index: int) -> torch.Tensor:
        """Z_hat_{t-1}: the cached latent after sampling step ``index`` (``-1`` = clean)."""
        nxt = index + 1
        return self.latents[self.timesteps[nxt] if nxt < len(self.timesteps) else -1]


def ddim_step(
    z: torch.Tensor, eps: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM move (Song et al. 2021, eq. 12 with sigma = 0) between noise levels.

    ``abar_from``/``abar_to`` are the cumulative alpha products of the two levels; moving to
    a lower level samples, to a higher one inverts.
    """
    x0 = (z - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


def ddim_inversion_step(
    z: torch.Tensor, eps: torch.Tensor, abar_cur: torch.Tensor, abar_next: torch.Tensor
) -> torch.Tensor:
    """z_{t_next} from z_{t_cur} (FPGA spec §4.3; DDIM eq. 12 run towards more noise)."""
    return ddim_step(z, eps, abar_cur, abar_next)


def ddim_inversion(
    noise_fn: NoiseFn,
    latents: torch.Tensor,
    scheduler,
    store: SelfAttentionStore,
    *,
    progress: bool = False,
) -> InversionCache:
    """Invert clean latents along ``scheduler.timesteps``, caching Z_hat_t and SA^C_t.

    Args:
        noise_fn: ``(z, t) -> eps`` (the ControlNet + UNet at CFG 1, whose ``attn1`` layers carry
            :class:`~.attention.SelfAttentionFusionProcessor` sharing ``store``).
        latents: Z_hat_0 ``(B, 4, h, w)`` (VAE latents times the scaling factor).
        scheduler: a DDIM scheduler whose ``set_timesteps`` was called.
        store: set to ``capture`` during the inversion.
    """
    timesteps = [int(t) for t in scheduler.timesteps]  # descending
    acp = scheduler.alphas_cumprod.to(latents.device, torch.float64)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    cache = {-1: latents.detach()}
    z = latents
    store.mode = "capture"
    ascending = list(reversed(timesteps))
    try:
        for i, t in enumerate(tqdm(ascending, desc="DDIM inversion", disable=not progress)):
            prev = ascending[i - 1] if i > 0 else -1
            abar_cur = (acp[prev] if prev >= 0 else final.to(acp.device)).to(z.dtype)
            abar_next = acp[t].to(z.dtype)
            store.timestep = t
            tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
            with torch.no_grad():
                eps = noise_fn(z, tt)
            z = ddim_inversion_step(z, eps, abar_cur, abar_next)
            cache[t] = z.detach()
    finally:
        store.mode = "off"
    return InversionCache(latents=cache, timesteps=timesteps, store=store)
