"""FLUX.1 Kontext as an edit backbone: the rectified-flow formulas by hand, the teacher equal
to diffusers' FluxKontextPipeline on the same tiny components and seeds, the one-step student
at sigma = 1, and the tiny bundle loading as the real folder does."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from instantportrait import parameterization as P

PROMPT = "make it a watercolor painting"


def test_flow_formulas_by_hand():
    x0, eps = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    # sigma 0.25: x = 0.75 x0 + 0.25 eps
    x = P.flow_noise(x0, eps, 0.25)
    torch.testing.assert_close(x, torch.tensor([1.625, 0.0]))
    v = P.flow_velocity_target(x0, eps)
    torch.testing.assert_close(v, torch.tensor([-1.5, 4.0]))
    # x0_hat = x - 0.25 v = [1.625 + 0.375, 0 - 1] ; eps_hat = x + 0.75 v
    torch.testing.assert_close(P.flow_x0(x, 0.25, v), x0)
    torch.testing.assert_close(P.flow_eps(x, 0.25, v), eps)
    # at sigma 1 the sample is the noise and x0_hat = eps - v
    torch.testing.assert_close(P.flow_x0(eps, 1.0, v), x0)
    assert float(P.sigma_from_timestep(200)) == pytest.approx(0.2)


def test_shift_mu_is_linear_between_the_configured_ends():
    from instantportrait.backbones.flux_kontext import flux_shift_mu

    assert flux_shift_mu(256) == pytest.approx(0.5)
    assert flux_shift_mu(4096) == pytest.approx(1.15)
    assert flux_shift_mu(2176) == pytest.approx(0.825)  # half way


@pytest.fixture(scope="module")
def parts():
    from instantportrait.backbones.kontext_components import build_kontext_components

    return build_kontext_components("tiny", seed=0)


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(1)
    return Image.fromarray((torch.rand(32, 48, 3, generator=g) * 255).byte().numpy())


def _reference(parts, photo, steps, guidance=2.5):
    from diffusers import FluxKontextPipeline

    ref = FluxKontextPipeline(**parts)
    ref.set_progress_bar_config(disable=True)
    h, w = photo.height, photo.width
    return ref(
        image=photo, prompt=PROMPT, num_inference_steps=steps, guidance_scale=guidance,
        height=h, width=w, max_area=h * w, _auto_resize=False, max_sequence_length=32,
        generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images  # fmt: skip


def _ours(parts, photo, steps, guidance=2.5, **kw):
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = KontextEditPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT, photo, num_inference_steps=steps, guidance_scale=guidance, max_sequence_length=32,
        generator=torch.Generator().manual_seed(0), output_type="pt", **kw,
    ).images  # fmt: skip


@pytest.mark.parametrize("steps", [1, 4])
def test_teacher_equals_diffusers_kontext(parts, photo, steps):
    """The whole path (prompt encoding, image latents on the sequence with first id 1, the
    shifted sigmas, distilled guidance, Euler steps, decoding) against diffusers' own."""
    ref = _reference(parts, photo, steps)
    ours = _ours(parts, photo, steps)
    assert ours.shape == ref.shape == (1, 3, 32, 48)
    assert float((ours - ref).abs().max()) <= 1e-4


def test_guidance_and_the_edit_image_reach_the_transformer(parts, photo):
    """Changing the distilled guidance or the edit image changes the output (a backbone that
    dropped either would still match diffusers only by accident of both being unused)."""
    base = _ours(parts, photo, 1)
    assert float((base - _ours(parts, photo, 1, guidance=7.0)).abs().max()) > 1e-4
    other = Image.new("RGB", photo.size, (250, 10, 10))
    assert float((base - _ours(parts, other, 1)).abs().max()) > 1e-4


def test_one_step_is_x0_hat_at_sigma_one(parts, photo):
    """The student's single call: x0_hat = eps - v_hat(eps, sigma=1), decoded; computed here
    from the backbone's parts by hand."""
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = KontextEditPipeline(**parts)
    bb = pipe.backbone
    noise = torch.randn(1, 16, 16, 24, generator=torch.Generator().manual_seed(5))
    got = pipe(PROMPT, photo, num_inference_steps=1, latents=noise, max_sequence_length=32,
               output_type="latent").images  # fmt: skip
    with torch.no_grad():
        cond = bb.encode_prompt([PROMPT], 32)
        pix = pipe.image_processor.preprocess(photo, 32, 48)
        z_img = bb.encode_image(pix)
        v = bb.predict(noise, torch.ones(1), cond, z_img, 2.5)
    torch.testing.assert_close(got, noise - v, atol=1e-5, rtol=0)


def test_style_boost_feeds_the_output_back(parts, photo):
    once = _ours(parts, photo, 1)
    twice = _ours(parts, photo, 1, iterations=2)
    assert float((once - twice).abs().max()) > 1e-4


def test_tiny_bundle_is_a_kontext_folder_diffusers_loads(tmp_path):
    from diffusers import FluxKontextPipeline

    from instantportrait.backbones import is_kontext_folder
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline
    from instantportrait.tiny import write_tiny

    folder = tmp_path / "kontext"
    write_tiny(folder, "kontext")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxKontextPipeline" and is_kontext_folder(folder)
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["use_dynamic_shifting"] is True and sched["max_shift"] == 1.15
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (
        16,
        0.3611,
        0.1159,
    )
    FluxKontextPipeline.from_pretrained(folder)
    pipe = KontextEditPipeline.from_pretrained(folder)
    assert pipe.transformer.config.guidance_embeds and pipe.transformer.config.in_channels == 64
    assert pipe.tokenizer_2("a cat").input_ids[-1] == pipe.tokenizer_2.eos_token_id == 1


@pytest.mark.parametrize("steps", [1, 2])
def test_denoising_hands_the_model_its_timestep_on_the_models_device(parts, steps):
    """The scheduler keeps its timesteps on the CPU; a model on another device (CUDA in use,
    the meta device here, which refuses mixed devices the same way) must get the timestep on
    its own device, or the time embedding's linear layer fails on the first GPU edit."""
    import copy

    from instantportrait.backbones.flux_kontext import KontextCondition
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = KontextEditPipeline(**{**parts, "transformer": copy.deepcopy(parts["transformer"])})
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.to("meta")
    m = {"device": "meta"}
    cond = KontextCondition(
        torch.zeros(1, 4, 32, **m), torch.zeros(1, 32, **m), torch.zeros(4, 3, **m)
    )
    x, image_latents = torch.zeros(1, 16, 4, 4, **m), torch.zeros(1, 16, 4, 4, **m)
    out = pipe._denoise(x, cond, image_latents, steps, None)
    assert out.device.type == "meta" and out.shape == x.shape
