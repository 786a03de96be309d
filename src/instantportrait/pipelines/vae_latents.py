"""Images to latents and back, for any diffusers autoencoder, as diffusers' pipelines do it.

Two families of autoencoders answer ``encode`` differently: ``AutoencoderKL`` (and its
relatives) returns a posterior (``latent_dist``: its mode or a sample), ``AutoencoderTiny``
(TAESD) returns the latents themselves (``latents``). A pipeline that encodes images must read
both, as diffusers' ``retrieve_latents`` does; a swapped-in TAESD is the common speed-up.

The diffusion latent is ``(z - shift_factor) * scaling_factor`` of the autoencoder's raw latent
``z`` (``shift_factor`` absent or 0 for SD1.5/SDXL's VAE, set for SD3/FLUX's), and decoding
inverts it: ``latents / scaling_factor + shift_factor``. A VAE with per-channel
``latents_mean``/``latents_std`` in its config (Playground v2.5's, read by diffusers' SDXL
pipelines) uses ``(z - mean) * scaling_factor / std`` instead. InstructPix2Pix conditions on the
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


def _factors(vae: Any, like: torch.Tensor) -> tuple[float, Any, Any]:
    """(scaling factor, shift, std): shift and std per channel (shaped for ``like``) when the
    config has ``latents_mean``/``latents_std``, else the scalar ``shift_factor`` (or 0) and
    ``None``."""
    config = vae.config
    scale = getattr(config, "scaling_factor", None)
    scale = 1.0 if scale is None else float(scale)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean)) + (1,) * (like.ndim - 2)
        as_tensor = {"device": like.device, "dtype": like.dtype}
        return (
            scale,
            torch.tensor(mean, **as_tensor).reshape(shape),
            torch.tensor(std, **as_tensor).reshape(shape),
        )
    shift = getattr(config, "shift_factor", None)
    return scale, (0.0 if shift is None else float(shift)), None


def to_diffusion_latents(vae: Any, raw: torch.Tensor) -> torch.Tensor:
    """``(z - shift_factor) * scaling_factor`` (or ``(z - mean) * scaling_factor / std``):
    the latent the denoiser works on."""
    scale, shift, std = _factors(vae, raw)
    if std is not None:
        return (raw - shift) * scale / std
    return (raw - shift) * scale if shift else raw * scale


def from_diffusion_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``latents / scaling_factor + shift_factor`` (or ``latents * std / scaling_factor +
    mean``): what the autoencoder's decoder takes."""
    scale, shift, std = _factors(vae, latents)
    if std is not None:
        return latents * std / scale + shift
    return latents / scale + shift if shift else latents / scale


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Diffusion latents to images in (about) [-1, 1], on the VAE's device and dtype; not
    clamped."""
    first = next(vae.parameters())
    z = from_diffusion_latents(vae, latents.to(device=first.device, dtype=first.dtype))
    return vae.decode(z, return_dict=False)[0]
