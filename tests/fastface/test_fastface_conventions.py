"""FastFacePipeline and diffusers' conventions: step callbacks in diffusers' signature, the
per-call state, and a swapped AutoencoderTiny (TAESD-XL) decoding."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderTiny

from instantportrait.errors import InputError
from instantportrait.pipelines.fastface_loading import load_fastface

SIZE = 32


@pytest.fixture(scope="module")
def pipe(tiny_bundle, fastface_cache):
    import os

    os.environ["INSTANTPORTRAIT_CACHE"] = str(fastface_cache)
    return load_fastface(
        "lcm",
        base=tiny_bundle["sdxl"],
        distilled=tiny_bundle["sdxl-distilled"],
        ip_adapter=tiny_bundle["faceid-plus-v2"],
        image_encoder=tiny_bundle["clip-vision"],
    )


def _run(pipe, **kwargs):
    g = torch.Generator().manual_seed(0)
    arcface = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    crop = torch.rand(1, 3, 224, 224, generator=g)
    kwargs.setdefault("output_type", "latent")
    return pipe("a portrait", arcface, crop, preset="fastface-am2", height=SIZE, width=SIZE,
                generator=torch.Generator().manual_seed(1), **kwargs).images  # fmt: skip


def test_callback_in_diffusers_signature_sees_and_replaces_latents(pipe):
    seen = []

    def zero_last(p, i, t, kwargs):
        assert p is pipe and sorted(kwargs) == ["latents"]
        seen.append(i)
        if i == p.num_timesteps - 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return kwargs

    assert _run(pipe, callback_on_step_end=zero_last).abs().max() == 0
    assert seen == [0, 1, 2, 3] and pipe.num_timesteps == 4
    assert pipe.guidance_scale == 1.0  # DCG's scales are per step; no baseline CFG
    with pytest.raises(InputError, match="prompt_embeds"):
        _run(
            pipe,
            callback_on_step_end=zero_last,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        )


def test_autoencoder_tiny_decodes(pipe):
    """TAESD-XL swapped in (it has no post_quant_conv): the images are its decoding."""
    torch.manual_seed(0)
    taesd = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).eval()  # fmt: skip
    original = pipe.vae
    pipe.vae = taesd
    try:
        latents = _run(pipe)
        images = _run(pipe, output_type="pt")
    finally:
        pipe.vae = original
    with torch.no_grad():
        decoded = taesd.decode(latents / taesd.config.scaling_factor).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
