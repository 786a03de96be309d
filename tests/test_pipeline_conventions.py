"""diffusers' pipeline conventions (tests/pipeline_conventions.py) for the edit, FPGA and
RepControlNet pipelines, plus what a swapped VAE must do where images are encoded."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from diffusers.callbacks import SDCFGCutoffCallback
from PIL import Image

from instantportrait.components import build_components
from instantportrait.pipelines import InstantPortraitPipeline
from instantportrait.pipelines.fpga import FPGAPipeline, fpga_components
from instantportrait.pipelines.rep_controlnet import RepControlNetPipeline
from pipeline_conventions import PipelineConventions, gen, tiny_autoencoder_tiny

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@cache
def _portrait(size: int) -> Image.Image:
    return Image.open(EXAMPLES / "astronaut.png").convert("RGB").resize((size, size))


class TestEditPipeline(PipelineConventions):
    pipeline_class = InstantPortraitPipeline
    callback_tensor_inputs = ("latents", "prompt_embeds", "image_latents")

    def components(self):
        return build_components("tiny", seed=0)

    def inputs(self):
        return {
            "prompt": "wearing a hat",
            "image": _portrait(32),
            "resolution": 32,
            "guidance_scale": 5.0,
            "image_guidance_scale": 1.5,
        }

    def encode_text(self, pipe):
        return pipe.encode_prompt("wearing a hat")[0]

    def test_autoencoder_tiny_image_latents_are_its_latents(self):
        """The image condition is AutoencoderTiny's own latent, all 4 channels (it was halved
        into 2 channels, a crash)."""
        vae = tiny_autoencoder_tiny()
        pipe = InstantPortraitPipeline(**{**self.components(), "vae": vae})
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(pipe.encode_image(x), vae.encode(x).latents)

    def test_style_boost_with_latents_and_callbacks(self, pipe):
        """``latents`` starts the first pass; step indices run on across passes; a CFG cutoff
        in the first pass holds in the second."""
        seen = []

        def record(p, i, t, kwargs):
            seen.append((i, kwargs["prompt_embeds"].shape[0]))
            return kwargs

        lat = torch.randn(1, 4, 4, 4, generator=gen(5))
        a = self.run(
            pipe,
            seed=7,
            latents=lat,
            iterations=2,
            callback_on_step_end=record,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        )
        assert [s[0] for s in seen] == [0, 1, 2, 3] and pipe.num_timesteps == 4
        torch.testing.assert_close(a, self.run(pipe, seed=7, latents=lat, iterations=2))
        assert not torch.allclose(a, self.run(pipe, seed=7, iterations=2))
        seen.clear()
        cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0)

        def both(p, i, t, kwargs):
            out = cutoff(p, i, t, kwargs)
            seen.append((i, out["prompt_embeds"].shape[0]))
            return out

        self.run(
            pipe,
            iterations=2,
            callback_on_step_end=both,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        )
        assert seen == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_matches_diffusers_instruct_pix2pix_with_autoencoder_tiny():
    """The same AutoencoderTiny in diffusers' InstructPix2Pix pipeline and ours: same images."""
    components = {**build_components("tiny", seed=0), "vae": tiny_autoencoder_tiny(seed=3)}
    ours = InstantPortraitPipeline(**components)
    ref = StableDiffusionInstructPix2PixPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=3, guidance_scale=5.0, image_guidance_scale=1.5)
    image = _portrait(32)
    a = ours("make it snow", image, generator=gen(7), output_type="np", resolution=32, **kw)
    b = ref("make it snow", image=image, generator=gen(7), output_type="np", **kw)
    assert a.images.shape == b.images.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(a.images, b.images, atol=1e-4)


class TestFPGAPipeline(PipelineConventions):
    pipeline_class = FPGAPipeline

    def components(self):
        return fpga_components("tiny", seed=0)

    def inputs(self):
        return {
            "prompt": "a portrait",
            "image": Image.fromarray(np.zeros((64, 64, 3), np.uint8)),
            "id_embeds": torch.randn(1, 4, 32, generator=gen(11)),
            "guidance_scale": 5.0,
        }

    def encode_text(self, pipe):
        return pipe.encode_prompt(["a portrait"], torch.device("cpu"))


class TestRepControlNetPipeline(PipelineConventions):
    pipeline_class = RepControlNetPipeline

    @pytest.fixture(scope="class", autouse=True)
    def _bundle(self, request, tmp_path_factory):
        from instantportrait.tiny import write_tiny

        folder = write_tiny(tmp_path_factory.mktemp("rep") / "rep", "repcontrolnet")
        request.cls.folder = folder

    def components(self):
        return dict(RepControlNetPipeline.from_pretrained(str(self.folder)).components)

    def inputs(self):
        return {
            "prompt": "a portrait",
            "image": Image.fromarray(np.zeros((64, 64, 3), np.uint8)),
            "id_embeds": torch.randn(1, 4, 32, generator=gen(11)),
            "guidance_scale": 5.0,
        }

    def encode_text(self, pipe):
        return pipe.encode_text(["a portrait"], torch.device("cpu"))


# ---- DIIR restoration: deterministic (no generator, no latents); callbacks and VAEs ---------
@pytest.fixture(scope="module")
def diir_inputs():
    crop = _portrait(256).crop((80, 30, 144, 94)).resize((64, 64))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 20:44] = 1.0
    return {"prompt": "a face", "image": [crop], "control_image": [Image.new("RGB", (64, 64))],
            "mask": mask, "num_inference_steps": 2, "guidance_scale": 5.0,
            "output_type": "latent"}  # fmt: skip


@pytest.fixture(scope="module")
def diir_components(tmp_path_factory):
    from instantportrait.pipelines.restore import DIIRPipeline
    from instantportrait.tiny import write_tiny

    folder = write_tiny(tmp_path_factory.mktemp("diir") / "model", "restore", seed=0)
    return dict(DIIRPipeline.from_pretrained(folder).components)


def _diir(components, **swap):
    from instantportrait.pipelines.restore import DIIRPipeline

    pipe = DIIRPipeline(**{**components, **swap})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_diir_callbacks_guidance_and_cfg_cutoff(diir_components, diir_inputs):
    pipe = _diir(diir_components)
    plain = pipe(**diir_inputs).latents

    def increase(p, i, t, kwargs):
        p._guidance_scale += 1.0
        return kwargs

    assert not torch.allclose(pipe(**diir_inputs, callback_on_step_end=increase).latents, plain)
    assert pipe.num_timesteps == 2 and pipe.guidance_scale == 7.0

    calls = []
    handle = pipe.unet.register_forward_hook(
        lambda m, a, kw, out: calls.append(kw["encoder_hidden_states"].clone()), with_kwargs=True
    )
    try:
        cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=0)
        pipe(**diir_inputs, callback_on_step_end=cutoff)
    finally:
        handle.remove()
    # Inversion (2 calls, conditional only), then the guided step, then the conditional alone.
    assert [c.shape[0] for c in calls] == [1, 1, 2, 1]
    torch.testing.assert_close(calls[3], calls[2][-1:])
    torch.testing.assert_close(calls[3], calls[0])

    def zero_last(p, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 1 else kwargs

    assert pipe(**diir_inputs, callback_on_step_end=zero_last).latents.abs().max() == 0


def test_diir_text_encoder_only_and_autoencoder_tiny(diir_components, diir_inputs):
    from instantportrait.pipelines.edit_support import image_to_tensor

    text_only = _diir(diir_components, vae=None, unet=None)
    dev = torch.device("cpu")
    torch.testing.assert_close(
        text_only.encode_text(["a face"], dev), _diir(diir_components).encode_text(["a face"], dev)
    )
    vae = tiny_autoencoder_tiny()
    out = _diir(diir_components, vae=vae)(**{**diir_inputs, "output_type": "pt"})
    with torch.no_grad():
        z0 = vae.encode(image_to_tensor(diir_inputs["image"][0])).latents
        decoded = vae.decode(out.latents / vae.config.scaling_factor).sample
    # Z_hat_0 is TAESD's own latent (scaling factor 1); the images are its decoding.
    torch.testing.assert_close(out.inversion.latents[-1], z0 * vae.config.scaling_factor)
    torch.testing.assert_close(out.images, (decoded / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)


def test_faceanet_inpainting_encodes_with_autoencoder_tiny():
    """G_id's masked-image channels are AutoencoderTiny's latents of the masked image."""
    from instantportrait.pipelines.faceanet import FaceANetPipeline
    from instantportrait.pipelines.faceanet_parts import load_inpaint_components, masked_image

    vae = tiny_autoencoder_tiny()
    pipe = FaceANetPipeline(**{**load_inpaint_components("tiny", 0), "vae": vae})
    pipe.set_progress_bar_config(disable=True)
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=gen(2))
    pipe.conditioning = lambda id_prompt, trim_padding=False: (text, text, None)
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 5:]))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    image = _portrait(64)
    try:
        out = pipe.inpaint(image, mask, "x", num_inference_steps=2, guidance_scale=1.0)
    finally:
        handle.remove()
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = vae.encode(masked_image(x, mask[None])).latents * vae.config.scaling_factor
    assert len(seen) == 2 and out.size == (64, 64)
    for masked in seen:
        torch.testing.assert_close(masked, expected)
