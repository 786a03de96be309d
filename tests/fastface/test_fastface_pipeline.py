"""FastFacePipeline on the tiny bundle: every family's loading path, every preset, AM steps."""

from __future__ import annotations

import pytest
import torch

from instantportrait import attention
from instantportrait.attention import FastFaceIPAdapterAttnProcessor
from instantportrait.pipelines.fastface_loading import adapter_state_dict, load_fastface
from instantportrait.pipelines.fastface_presets import FAMILIES, fastface_presets

SIZE = 32  # 4x4 latents


def _load(bundle, family: str):
    return load_fastface(
        family,
        base=bundle["sdxl"],
        distilled=bundle["sdxl-distilled"],
        ip_adapter=bundle["faceid-plus-v2"],
        image_encoder=bundle["clip-vision"],
    )


def _identity(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    arcface = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    return arcface, torch.rand(1, 3, 224, 224, generator=g)


def _run(pipe, preset: str, seed: int = 0, **kwargs):
    arcface, crop = _identity()
    return pipe(
        "a portrait",
        arcface,
        crop,
        preset=preset,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        **kwargs,
    ).images


@pytest.fixture(scope="module")
def pipes(tiny_bundle, fastface_cache):
    import os

    os.environ["INSTANTPORTRAIT_CACHE"] = str(fastface_cache)
    return {family: _load(tiny_bundle, family) for family in FAMILIES}


def test_each_family_loads_its_weights_and_scheduler(pipes, tiny_bundle) -> None:
    from diffusers import StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(tiny_bundle["sdxl"])
    base_w = dict(base.unet.named_parameters())["conv_in.weight"]
    for family, pipe in pipes.items():
        spec = FAMILIES[family]
        assert type(pipe.scheduler).__name__ == spec.scheduler, family
        assert pipe.family == family
        # the family's weights changed the base UNet (fused LoRA, replaced UNet)
        conv = pipe.unet.conv_in.weight
        ip_layers = [
            n
            for n, p in pipe.unet.attn_processors.items()
            if isinstance(p, FastFaceIPAdapterAttnProcessor)
        ]
        assert ip_layers and all("attn2" in n for n in ip_layers)
        assert "faceid_0" in pipe.unet.peft_config
        if spec.weights != "lora":
            assert not torch.equal(conv, base_w), family
    hyper = pipes["hyper"].unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    base_q = base.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert not torch.allclose(hyper.base_layer.weight, base_q.weight)  # Hyper LoRA fused
    assert pipes["hyper"].scheduler.config.timestep_spacing == "trailing"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_four_steps_per_family(pipes, family: str) -> None:
    for preset in ("baseline", "fastface-am2"):
        images = _run(pipes[family], preset)
        assert images.shape == (1, 3, SIZE, SIZE) and torch.isfinite(images).all()


@pytest.mark.parametrize("preset", list(fastface_presets()))
def test_every_preset_runs_and_two_calls_agree(pipes, preset: str) -> None:
    first = _run(pipes["hyper"], preset)
    second = _run(pipes["hyper"], preset)
    assert torch.equal(first, second)
    assert torch.isfinite(first).all()


def test_presets_change_the_result(pipes) -> None:
    pipe = pipes["lightning"]
    base = _run(pipe, "baseline")
    for preset in ("am1", "am2", "dcg"):
        assert not torch.allclose(_run(pipe, preset), base, atol=1e-6), preset


def test_step_index_advances_per_denoising_step(pipes, monkeypatch) -> None:
    seen: list[int] = []
    real = attention.manipulated_ip_attention

    def spy(query, key, value, preset, part, step):
        seen.append(step)
        return real(query, key, value, preset, part, step)

    monkeypatch.setattr(attention, "manipulated_ip_attention", spy)
    pipe = pipes["hyper"]
    layers = sum(
        1
        for n, p in pipe.unet.attn_processors.items()
        if isinstance(p, FastFaceIPAdapterAttnProcessor) and p.part in ("down", "up")
    )
    _run(pipe, "am1")
    assert seen == [k for k in range(4) for _ in range(layers)]
    seen.clear()
    _run(pipe, "am1")  # a second call starts at step 0 again
    assert seen == [k for k in range(4) for _ in range(layers)]
    assert pipe.am_state.step is None and pipe.am_state.preset is None


def test_dcg_branches_are_batched_in_one_unet_call(pipes, monkeypatch) -> None:
    pipe = pipes["turbo"]
    batches: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    try:
        _run(pipe, "dcg")
        _run(pipe, "baseline")
    finally:
        hook.remove()
    assert batches == [3] * 4 + [1] * 4


def test_lcm_baseline_is_cfg_1_5(pipes) -> None:
    pipe = pipes["lcm"]
    batches: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    try:
        _run(pipe, "baseline")
    finally:
        hook.remove()
    assert batches == [2] * 4
    assert pipe._guidance_plan(fastface_presets()["baseline"]) == (["u", "ti"], 1.5)


def test_adapter_bin_converted_once(tiny_bundle, isolated_cache) -> None:
    first = adapter_state_dict(tiny_bundle["faceid-plus-v2"])
    made = sorted((isolated_cache / "ip_adapter").glob("*.safetensors"))
    assert len(made) == 1
    stamp = made[0].stat().st_mtime_ns
    second = adapter_state_dict(tiny_bundle["faceid-plus-v2"])
    assert made[0].stat().st_mtime_ns == stamp
    assert first["ip_adapter"].keys() == second["ip_adapter"].keys()
    raw = torch.load(
        tiny_bundle["faceid-plus-v2"] / "ip-adapter-faceid-plusv2_sdxl.bin",
        weights_only=True,
    )
    for key, value in raw["image_proj"].items():
        assert torch.equal(first["image_proj"][key], value)


def test_missing_hub_model_is_one_clear_error(tiny_bundle) -> None:
    from instantportrait.errors import InputError, ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="--base") as info:
        load_fastface("hyper", base="no-such-org/no-such-sdxl")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="--family"):
        load_fastface(tiny_bundle["sdxl"])  # SDXL's Euler scheduler does not tell the family


def test_pipeline_folder_with_family(tiny_bundle, isolated_cache) -> None:
    pipe = load_fastface(
        tiny_bundle["sdxl"],
        family="lightning",
        ip_adapter=tiny_bundle["faceid-plus-v2"],
        image_encoder=tiny_bundle["clip-vision"],
    )
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing" and pipe.family == "lightning"
    assert _run(pipe, "fastface-am1").shape == (1, 3, SIZE, SIZE)
