"""InstantPortraitPipeline against hand computations and against diffusers' InstructPix2Pix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
from PIL import Image

from instantportrait.errors import InputError, ModelNotFoundError
from instantportrait.guidance import instruct_pix2pix_guidance
from instantportrait.io import ResolutionPolicy, load_image
from instantportrait.pipelines import InstantPortraitPipeline
from instantportrait.pipelines.edit import image_to_tensor

RES = 64


def fresh_pipe(components, **config) -> InstantPortraitPipeline:
    """A pipeline sharing the session's networks but with its own scheduler."""
    scheduler = EulerAncestralDiscreteScheduler.from_config(
        components["scheduler"].config, **config.pop("scheduler_config", {})
    )
    pipe = InstantPortraitPipeline(**{**components, "scheduler": scheduler}, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def square_faces(astronaut_path, grace_hopper_path):
    a = load_image(astronaut_path).resize((RES, RES))
    g = load_image(grace_hopper_path).crop((0, 44, 512, 556)).resize((RES, RES))
    return a, g


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_step_equals_hand_computation(tiny_components, square_faces, prediction_type):
    pipe = fresh_pipe(tiny_components, scheduler_config={"prediction_type": prediction_type})
    image = square_faces[0]
    out = pipe(
        "wearing a hat",
        image,
        num_inference_steps=1,
        guidance_scale=1.0,
        image_guidance_scale=1.0,
        generator=gen(3),
        output_type="latent",
        resolution=RES,
    ).images

    c = tiny_components
    with torch.no_grad():
        image_latents = c["vae"].encode(image_to_tensor(image)).latent_dist.mode()
        noise = torch.randn(image_latents.shape, generator=gen(3))
        ids = c["tokenizer"](
            ["wearing a hat"], padding="max_length", max_length=77, return_tensors="pt"
        ).input_ids
        text = c["text_encoder"](ids)[0]
        model_out = c["unet"](torch.cat([noise, image_latents], 1), 999, text).sample
    ab = c["scheduler"].alphas_cumprod[999]
    if prediction_type == "epsilon":
        expected = (noise - (1 - ab).sqrt() * model_out) / ab.sqrt()
    else:
        expected = ab.sqrt() * noise - (1 - ab).sqrt() * model_out
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_multi_step_guidance_is_the_instruct_pix2pix_formula(
    tiny_components, square_faces, monkeypatch
):
    pipe = fresh_pipe(tiny_components)
    unet_calls, step_inputs = [], []

    def record(module, args, kwargs, output):
        unet_calls.append(
            (args[0].clone(), kwargs["encoder_hidden_states"].clone(), output[0].clone())
        )

    handle = pipe.unet.register_forward_hook(record, with_kwargs=True)
    original_step = pipe.scheduler.step

    def step(model_output, *a, **kw):
        step_inputs.append(model_output.clone())
        return original_step(model_output, *a, **kw)

    monkeypatch.setattr(pipe.scheduler, "step", step)
    try:
        pipe(
            "as a marble statue",
            square_faces[0],
            num_inference_steps=3,
            guidance_scale=6.0,
            image_guidance_scale=1.7,
            generator=gen(),
            resolution=RES,
        )
    finally:
        handle.remove()
    assert len(unet_calls) == 3 == len(step_inputs)
    for (x, ctx, out), guided in zip(unet_calls, step_inputs):
        # The three branches in one call, the conditional last (diffusers' order):
        # (0, 0), (c_I, 0), (c_I, c_T).
        assert x.shape[0] == 3
        assert torch.equal(x[1, 4:], x[2, 4:]) and torch.count_nonzero(x[0, 4:]) == 0
        assert torch.equal(ctx[0], ctx[1]) and not torch.equal(ctx[1], ctx[2])
        none, image_only, full = out.chunk(3)
        by_hand = none + 1.7 * (image_only - none) + 6.0 * (full - image_only)
        torch.testing.assert_close(guided, by_hand)
        torch.testing.assert_close(
            guided, instruct_pix2pix_guidance(full, image_only, none, 6.0, 1.7)
        )


def test_matches_diffusers_instruct_pix2pix(tiny_components, square_faces):
    ours = fresh_pipe(tiny_components)
    ref = StableDiffusionInstructPix2PixPipeline(
        **{k: v for k, v in ours.components.items()},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=4, guidance_scale=5.0, image_guidance_scale=1.5)
    a = ours(
        "make it snow", square_faces[0], generator=gen(7), output_type="np", resolution=RES, **kw
    )
    b = ref("make it snow", image=square_faces[0], generator=gen(7), output_type="np", **kw)
    np.testing.assert_allclose(a.images, b.images, atol=1e-4)


def test_style_boost_feeds_each_output_back(tiny_pipe, square_faces):
    encoded, decoded = [], []
    h1 = tiny_pipe.vae.encoder.register_forward_hook(lambda m, i, o: encoded.append(i[0].clone()))
    h2 = tiny_pipe.vae.decoder.register_forward_hook(lambda m, i, o: decoded.append(o.clone()))
    try:
        out = tiny_pipe(
            "pixar style",
            square_faces[0],
            num_inference_steps=1,
            iterations=3,
            generator=gen(),
            output_type="pt",
            resolution=RES,
        ).images
    finally:
        h1.remove()
        h2.remove()
    assert len(encoded) == 3 and len(decoded) == 3
    for k in (1, 2):
        torch.testing.assert_close(encoded[k], decoded[k - 1].clamp(-1, 1))
    torch.testing.assert_close(out, (decoded[-1].clamp(-1, 1) / 2 + 0.5).clamp(0, 1))
    single = tiny_pipe(
        "pixar style",
        square_faces[0],
        num_inference_steps=1,
        generator=gen(),
        output_type="pt",
        resolution=RES,
    ).images
    assert not torch.allclose(out, single)


@pytest.mark.parametrize("steps", [1, 3])
def test_batch_equals_one_by_one(tiny_components, square_faces, steps):
    pipe = fresh_pipe(tiny_components)
    prompts = ["wearing sunglasses", "as an oil painting"]
    kw = dict(num_inference_steps=steps, output_type="pt", resolution=RES)
    batch = pipe(prompts, list(square_faces), generator=[gen(1), gen(2)], **kw).images
    singles = [
        pipe(p, im, generator=gen(s), **kw).images
        for p, im, s in zip(prompts, square_faces, (1, 2))
    ]
    torch.testing.assert_close(batch, torch.cat(singles), rtol=0, atol=2e-5)


def test_save_load_round_trip(tiny_pipe, tmp_path, square_faces):
    pipe = fresh_pipe(tiny_pipe.components, recommended_steps=2, student_timestep=900)
    pipe.save_pretrained(tmp_path / "m")
    loaded = InstantPortraitPipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.recommended_steps == 2 and loaded.config.student_timestep == 900
    for steps in (None, 1):
        a = pipe(
            "a",
            square_faces[1],
            num_inference_steps=steps,
            generator=gen(),
            output_type="pt",
            resolution=RES,
        )
        b = loaded(
            "a",
            square_faces[1],
            num_inference_steps=steps,
            generator=gen(),
            output_type="pt",
            resolution=RES,
        )
        assert torch.equal(a.images, b.images)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind
    assert list((tmp_path / "m" / "unet").glob("*.safetensors"))


def test_recommended_steps_default(tiny_model_dir, square_faces):
    pipe = InstantPortraitPipeline.from_pretrained(tiny_model_dir)
    calls = []
    pipe.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    pipe("a", square_faces[0], resolution=RES)
    assert calls == [1]  # one step, one branch: an IPNet needs no guidance


def test_loads_instruct_pix2pix_format(tiny_components, tmp_path, square_faces):
    ref = StableDiffusionInstructPix2PixPipeline(
        **tiny_components,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref.save_pretrained(tmp_path / "ip2p")
    pipe = InstantPortraitPipeline.from_pretrained(tmp_path / "ip2p")
    assert pipe.config.recommended_steps == 20
    out = pipe("a", square_faces[0], num_inference_steps=2, resolution=RES, output_type="pt").images
    assert out.shape == (1, 3, RES, RES)


def test_odd_sizes_and_narrow_aspect(tiny_pipe):
    odd = np.random.default_rng(0).integers(0, 255, (150, 37, 3), dtype=np.uint8)
    out = tiny_pipe("a", odd, num_inference_steps=1, resolution=RES).images[0]
    assert out.size == (16, 64)
    wide = Image.new("RGB", (203, 51), (120, 80, 60))  # about 4:1, no side a multiple of 8
    out = tiny_pipe("a", wide, num_inference_steps=2, resolution=RES, output_type="np").images
    assert out.shape == (1, 16, 64, 3) and np.isfinite(out).all()
    assert ResolutionPolicy(RES).target_size(203, 51) == (64, 16)


def test_input_errors(tiny_pipe, square_faces):
    with pytest.raises(InputError, match="empty prompt"):
        tiny_pipe("  ", square_faces[0])
    with pytest.raises(InputError, match="iterations"):
        tiny_pipe("a", square_faces[0], iterations=0)
    with pytest.raises(InputError, match="2 images and 3 prompts"):
        tiny_pipe(["a", "b", "c"], list(square_faces))
    with pytest.raises(InputError, match="generators"):
        tiny_pipe("a", list(square_faces), generator=[gen()], resolution=RES)
    with pytest.raises(InputError, match="output_type"):
        tiny_pipe("a", square_faces[0], output_type="jpeg")


def test_model_not_found_is_one_line(tmp_path):
    for name, match in [
        (tmp_path / "missing", "model not found: no such local folder"),
        (tmp_path, "no model_index.json"),
        ("nobody/no-such-model", "not found: no local folder .* not in the Hugging Face cache"),
    ]:
        with pytest.raises(ModelNotFoundError, match=match) as info:
            InstantPortraitPipeline.from_pretrained(name)
        assert "\n" not in str(info.value) and "init-tiny" in str(info.value)
