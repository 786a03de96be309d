"""Images to latents and back, for any diffusers autoencoder, as diffusers' pipelines do it.

Two families of autoencoders answer ``encode`` differently: ``AutoencoderKL`` (and its
relatives) returns a posterior (``latent_dist``: its mode or a sample), ``AutoencoderTiny``
(TAESD) returns the latents themselves (``latents``). A pipeline that encodes images must read
both, as diffusers' ``retrieve_latents`` does; a swapped-in TAESD is the common speed-up.

The diffusion latent is ``(z - shift_factor) * scaling_factor`` of the autoencoder's raw latent
``z`` (``shift_factor`` absent or 0 for SD1.5/SDXL's VAE, set for SD3/FLUX's), and decoding
inverts it: ``latents / scaling_factor + shift_factor``. InstructPix2Pix conditions on the
*raw* image latent (its training did not scale it), so the edit pipeline uses
:func:`encode_raw` alone for its image condition.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "decode_latents",
    "encode_raw",
    "from_diffusion_latents",
    "to_diffusion_latents",
    "vae_scale_factor",
]


def vae_scale_factor(vae: Any, default: int = 8) -> int:
    """Pixels per latent cell: ``2 ** (len(block_out_channels) - 1)``; ``default`` without a
    VAE (a text-encoder-only pipeline), as diffusers' pipelines do."""
    if vae is None:
        return default
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_raw(
    vae: Any,
    pixels: torch.Tensor,
    *,
    sample_mode: str = "argmax",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The autoencoder's raw latent of ``pixels`` in [-1, 1]: the posterior's mode
    (``sample_mode="argmax"``) or a sample (``"sample"``) for a KL autoencoder, the latents of
    one that returns latents (``AutoencoderTiny``). Not scaled (see the module doc)."""
    out = vae.encode(pixels)
    dist = getattr(out, "latent_dist", None)
    if dist is not None:
        return dist.sample(generator) if sample_mode == "sample" else dist.mode()
    latents = getattr(out, "latents", None)
    if latents is None:
        raise AttributeError(f"{type(vae).__name__}.encode gave neither latent_dist nor latents")
    return latents


def _factors(vae: Any) -> tuple[float, float]:
    config = vae.config
    scale = getattr(config, "scaling_factor", None)
    shift = getattr(config, "shift_factor", None)
    return (1.0 if scale is None else float(scale)), (0.0 if shift is None else float(shift))


def to_diffusion_latents(vae: Any, raw: torch.Tensor) -> torch.Tensor:
    """``(z - shift_factor) * scaling_factor``: the latent the denoiser works on."""
    scale, shift = _factors(vae)
    return (raw - shift) * scale if shift else raw * scale


def from_diffusion_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``latents / scaling_factor + shift_factor``: what the autoencoder's decoder takes."""
    scale, shift = _factors(vae)
    return latents / scale + shift if shift else latents / scale


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Diffusion latents to images in (about) [-1, 1], on the VAE's device and dtype; not
    clamped."""
    first = next(vae.parameters())
    z = from_diffusion_latents(vae, latents.to(device=first.device, dtype=first.dtype))
    return vae.decode(z, return_dict=False)[0]
