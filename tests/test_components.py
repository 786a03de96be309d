"""Component builders against published figures; the offline tokenizer against SD1.5's ids."""

from __future__ import annotations

import torch

from instantportrait.components import (
    CLIP_L_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD_VAE_CONFIG,
    SDXL_UNET_CONFIG,
    build_components,
    clip_tokenizer,
    count_parameters,
    write_clip_vocabulary,
)


def _meta_params(build) -> int:
    with torch.device("meta"):
        return count_parameters(build())


def test_real_size_parameter_counts_match_published_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd15 = _meta_params(lambda: UNet2DConditionModel(**SD15_UNET_CONFIG))
    ip2p = _meta_params(lambda: UNet2DConditionModel(**{**SD15_UNET_CONFIG, "in_channels": 8}))
    assert sd15 == 859_520_964  # Stable Diffusion 1.5's UNet
    assert ip2p - sd15 == 4 * 320 * 3 * 3  # InstructPix2Pix: 4 more input channels in conv_in
    assert _meta_params(lambda: AutoencoderKL(**SD_VAE_CONFIG)) == 83_653_863
    assert _meta_params(lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT_CONFIG))) == 123_060_480
    assert _meta_params(lambda: UNet2DConditionModel(**SDXL_UNET_CONFIG)) == 2_567_463_684


def test_tokenizer_ids_are_sd15s(tmp_path):
    tok = clip_tokenizer()
    # Reference ids of SD1.5's tokenizer (openai/clip-vit-large-patch14) for these texts.
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = tok("a photo", padding="max_length", max_length=8).input_ids
    assert ids == [49406, 320, 1125, 49407, 49407, 49407, 49407, 49407]  # pads with end-of-text
    assert len(tok) == 49408 and tok.model_max_length == 77
    # A saved tokenizer folder loads back to the same ids.
    write_clip_vocabulary(tmp_path / "tok")
    assert (
        clip_tokenizer(tmp_path / "tok")("Wearing A HAT!").input_ids
        == tok("wearing a hat!").input_ids
    )


def test_tiny_components_are_small_and_deterministic():
    a = build_components("tiny", seed=0)
    b = build_components("tiny", seed=0)
    c = build_components("tiny", seed=1)
    assert a["unet"].config.in_channels == 8
    assert count_parameters(a["unet"]) < 2_000_000
    pa, pb, pc = (next(x["unet"].parameters()) for x in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        lat = a["vae"].encode(x).latent_dist.mode()
    assert lat.shape == (1, 4, 8, 8)  # factor 8, like the real VAE
