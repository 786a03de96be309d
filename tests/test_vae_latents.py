"""Images to latents and back for any diffusers autoencoder (pipelines/vae_latents.py),
checked against values written out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL

from instantportrait.pipelines.vae_latents import (
    encode_raw,
    from_diffusion_latents,
    to_diffusion_latents,
    vae_scale_factor,
)
from pipeline_conventions import tiny_autoencoder_tiny


def _config(**kw):
    return SimpleNamespace(config=SimpleNamespace(**kw))


def test_scaling_shift_and_per_channel_statistics_by_hand():
    z = torch.tensor([[[[2.0]], [[-1.0]]]])  # (1, 2, 1, 1)
    sd = _config(scaling_factor=0.5, shift_factor=None)
    torch.testing.assert_close(to_diffusion_latents(sd, z), torch.tensor([[[[1.0]], [[-0.5]]]]))
    flux = _config(scaling_factor=0.5, shift_factor=0.25)  # (z - 0.25) * 0.5
    torch.testing.assert_close(
        to_diffusion_latents(flux, z), torch.tensor([[[[0.875]], [[-0.625]]]])
    )
    torch.testing.assert_close(
        from_diffusion_latents(flux, torch.tensor([[[[0.875]], [[-0.625]]]])), z
    )
    # Playground v2.5 style: (z - mean) * scaling / std per channel.
    pg = _config(scaling_factor=0.5, latents_mean=[1.0, -2.0], latents_std=[2.0, 0.5])
    expected = torch.tensor([[[[(2.0 - 1.0) * 0.5 / 2.0]], [[(-1.0 + 2.0) * 0.5 / 0.5]]]])
    torch.testing.assert_close(to_diffusion_latents(pg, z), expected)
    torch.testing.assert_close(from_diffusion_latents(pg, expected), z)


def test_encode_raw_reads_a_posterior_or_latents():
    torch.manual_seed(0)
    kl = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        dist = kl.encode(x).latent_dist
        torch.testing.assert_close(encode_raw(kl, x), dist.mean)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        sample = encode_raw(kl, x, sample_mode="sample", generator=g1)
        torch.testing.assert_close(sample, dist.mean + dist.std * torch.randn(
            dist.mean.shape, generator=g2))  # fmt: skip
        tiny = tiny_autoencoder_tiny()
        torch.testing.assert_close(encode_raw(tiny, x), tiny.encoder(x))
    assert vae_scale_factor(tiny) == 8 and vae_scale_factor(kl) == 1
    assert vae_scale_factor(None) == 8
