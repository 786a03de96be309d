"""The diffusers features users expect of the edit pipeline: num_images_per_prompt, height and
width, callback_on_step_end, mixed-size batches, LoRA, single files, the safety-checker policy,
speed presets, and no deprecation noise."""

from __future__ import annotations

import json
import os
import stat
import warnings

import pytest
import torch
from PIL import Image

from instantportrait.components import build_components
from instantportrait.errors import InputError, ModelNotFoundError
from instantportrait.io import load_image
from instantportrait.pipelines import InstantPortraitPipeline

RES = 32


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    p = InstantPortraitPipeline(**build_components("tiny", seed=0))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def faces(astronaut_path, grace_hopper_path):
    return load_image(astronaut_path).resize((RES, RES)), load_image(grace_hopper_path)


def one(pipe, image, seed, **kw):
    kw.setdefault("num_inference_steps", 1)
    kw.setdefault("resolution", RES)
    return pipe("wearing a hat", image, generator=gen(seed), output_type="np", **kw).images


def test_num_images_per_prompt_equals_single_calls(pipe, faces):
    a = faces[0]
    out = pipe(
        "wearing a hat",
        a,
        num_images_per_prompt=2,
        num_inference_steps=1,
        resolution=RES,
        generator=[gen(3), gen(4)],
        output_type="np",
    ).images
    assert out.shape == (2, RES, RES, 3)
    torch.testing.assert_close(out[0], one(pipe, a, 3)[0])
    torch.testing.assert_close(out[1], one(pipe, a, 4)[0])
    assert not (out[0] == out[1]).all()  # own noise per image
    with pytest.raises(InputError, match="num_images_per_prompt"):
        pipe("x", a, num_images_per_prompt=0)


def test_mixed_sizes_batch_equals_one_by_one(pipe, faces):
    # grace_hopper is 512x600: at long side 32 it is 24x32 (w x h), the astronaut 32x32.
    a, g = faces
    out = pipe(
        ["as a statue", "wearing a hat"],
        [a, g],
        num_inference_steps=1,
        resolution=RES,
        generator=[gen(0), gen(1)],
        output_type="np",
    ).images
    assert [o.shape for o in out] == [(32, 32, 3), (32, 24, 3)]
    alone_a = pipe(
        "as a statue", a, num_inference_steps=1, resolution=RES, generator=gen(0), output_type="np"
    ).images[0]
    alone_g = pipe(
        "wearing a hat",
        g,
        num_inference_steps=1,
        resolution=RES,
        generator=gen(1),
        output_type="np",
    ).images[0]
    torch.testing.assert_close(out[0], alone_a)
    torch.testing.assert_close(out[1], alone_g)


def test_height_and_width(pipe, faces):
    a = faces[0]
    img = pipe("x", a, height=16, width=40, num_inference_steps=1, generator=gen()).images[0]
    assert img.size == (40, 16)
    # one side alone keeps the aspect ratio (square input)
    img = pipe("x", a, height=24, num_inference_steps=1, generator=gen()).images[0]
    assert img.size == (24, 24)
    for bad in (30, 0, 100000):
        with pytest.raises(InputError, match="height"):
            pipe("x", a, height=bad, width=32)


def test_absurd_resolution_refused_before_any_work(pipe, faces):
    with pytest.raises(InputError, match="above the limit"):
        pipe("x", faces[0], resolution=100000)
    big = Image.new("RGB", (5000, 8))
    with pytest.raises(InputError, match="above the limit"):
        pipe("x", big, resolution=None)


def test_callback_on_step_end_sees_and_replaces_latents(pipe, faces):
    a = faces[0]
    seen = []

    def record(p, i, t, kw):
        assert p is pipe
        seen.append((i, int(t), tuple(kw["latents"].shape)))
        return {}

    pipe(
        "x",
        a,
        num_inference_steps=2,
        resolution=RES,
        generator=gen(),
        callback_on_step_end=record,
        guidance_scale=1.0,
        image_guidance_scale=1.0,
    )
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] > seen[1][1]  # timesteps descend
    seen.clear()
    pipe(
        "x",
        a,
        num_inference_steps=1,
        iterations=2,
        resolution=RES,
        generator=gen(),
        callback_on_step_end=record,
    )
    assert [(s[0], s[1]) for s in seen] == [(0, 999), (1, 999)]  # style boost continues the count

    def zero(p, i, t, kw):
        return {"latents": torch.zeros_like(kw["latents"])}

    out = pipe(
        "x",
        a,
        num_inference_steps=1,
        resolution=RES,
        generator=gen(),
        callback_on_step_end=zero,
        output_type="pt",
    ).images
    expected = pipe.decode_latents(torch.zeros(1, 4, RES // 8, RES // 8)).float() / 2 + 0.5
    torch.testing.assert_close(out, expected.clamp(0, 1))
    with pytest.raises(InputError, match="callback_on_step_end_tensor_inputs"):
        pipe("x", a, callback_on_step_end=zero, callback_on_step_end_tensor_inputs=["noise"])


def test_config_values_read_without_deprecation_warnings(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipe.recommended_steps == 20
        assert pipe.student_timestep == 999
        assert pipe.default_guidance_scale == 7.5
        assert pipe.default_image_guidance_scale == 1.5


def test_speed_preset_on_cpu_same_images_and_undo(faces):
    from instantportrait.speed import PRESETS

    p = InstantPortraitPipeline(**build_components("tiny", seed=0))
    p.set_progress_bar_config(disable=True)
    plain = one(p, faces[0], 0)
    state = p.enable_speed("safe")
    assert state.applied == ["channels-last", "sdpa", "fuse-qkv"]
    assert ("fp16", "not on cpu") in state.skipped
    assert "skipped" in state.describe()
    fast = one(p, faces[0], 0)
    assert abs(fast - plain).max() < 1e-4
    p.disable_speed()
    assert p.unet.conv_in.weight.is_contiguous()
    assert set(PRESETS) >= {"none", "safe", "fast", "max"}
    with pytest.raises(InputError, match="--speed"):
        p.enable_speed("warp")
    with pytest.raises(InputError, match="needs a CUDA device"):
        p.enable_speed("cuda-graphs")
    with pytest.raises(InputError, match="tiny-vae needs"):
        p.enable_speed("tiny-vae")


def test_tiny_vae_option_decodes_with_the_given_weights(tmp_path, faces):
    from diffusers import AutoencoderTiny

    taesd = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    taesd.save_pretrained(tmp_path / "taesd")
    p = InstantPortraitPipeline(**build_components("tiny", seed=0))
    p.set_progress_bar_config(disable=True)
    plain = one(p, faces[0], 0)
    state = p.enable_speed("tiny-vae", tiny_vae=tmp_path / "taesd")
    assert state.applied == ["tiny-vae"]
    assert p._latent_decoder is not None
    assert one(p, faces[0], 0).shape == plain.shape
    p.disable_speed()
    assert p._latent_decoder is None


def test_lora_loads_through_diffusers_and_unloads(tmp_path, faces):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    p = InstantPortraitPipeline(**build_components("tiny", seed=0))
    p.set_progress_bar_config(disable=True)
    plain = one(p, faces[0], 0)
    donor = build_components("tiny", seed=0)["unet"]
    donor.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,
        )
    )
    InstantPortraitPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(donor)
    )
    p.load_lora_weights(tmp_path / "lora", adapter_name="style")
    styled = one(p, faces[0], 0)
    assert abs(styled - plain).max() > 1e-4
    p.set_adapters("style", adapter_weights=0.0)
    torch.testing.assert_close(one(p, faces[0], 0), plain, atol=1e-5, rtol=0)
    p.unload_lora_weights()
    torch.testing.assert_close(one(p, faces[0], 0), plain, atol=1e-5, rtol=0)


def test_safety_checker_policy_stated_once_and_not_loaded(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "ip2p")
    index_path = tmp_path / "ip2p" / "model_index.json"
    index = json.loads(index_path.read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["requires_safety_checker"] = True
    index_path.write_text(json.dumps(index))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = InstantPortraitPipeline.from_pretrained(tmp_path / "ip2p")
    policy = [w for w in caught if "safety checker" in str(w.message)]
    assert len(policy) == 1 and "neither loaded nor run" in str(policy[0].message)
    assert "safety_checker" not in loaded.components


def test_save_pretrained_gives_plain_write_modes(tmp_path, pipe):
    mask = os.umask(0o022)
    try:
        pipe.save_pretrained(tmp_path / "m")
    finally:
        os.umask(mask)
    paths = [tmp_path / "m", *(tmp_path / "m").rglob("*")]
    assert any(p.suffix == ".safetensors" for p in paths)
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_from_single_file_needs_a_local_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such checkpoint"):
        InstantPortraitPipeline.from_single_file(tmp_path / "missing.safetensors")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"0")
    with pytest.raises(ModelNotFoundError, match="config=FOLDER"):
        InstantPortraitPipeline.from_single_file(ckpt)
    with pytest.raises(ModelNotFoundError, match="config folder not found"):
        InstantPortraitPipeline.from_single_file(ckpt, config=str(tmp_path / "nowhere"))


def test_from_single_file_with_a_local_config_gives_the_same_edit(tmp_path, pipe, faces):
    from instantportrait.pipelines import load_edit_pipeline
    from instantportrait.single_file import save_single_file

    pipe.save_pretrained(tmp_path / "config")
    save_single_file(pipe, tmp_path / "model.safetensors")
    loaded = load_edit_pipeline(tmp_path / "model.safetensors", config=tmp_path / "config")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(one(loaded, faces[0], 0), one(pipe, faces[0], 0), atol=0, rtol=0)
    assert loaded.recommended_steps == pipe.recommended_steps
