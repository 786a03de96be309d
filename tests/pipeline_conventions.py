"""What users of diffusers expect of any pipeline, checked as diffusers' own
``PipelineTesterMixin`` checks its pipelines: the call signature, a text-encoder-only pipeline,
the save/load round trip, batch vs single, ``latents=``, step callbacks (diffusers'
``SDCFGCutoffCallback`` included) and a swapped VAE (``AutoencoderTiny``).

A test class per pipeline subclasses :class:`PipelineConventions` and says how to build its
tiny components and inputs. Outputs are compared as latents (``output_type="latent"``)
unless the test is about decoding.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from diffusers import AutoencoderTiny
from diffusers.callbacks import SDCFGCutoffCallback

from instantportrait.errors import InputError

#: The arguments diffusers' pipelines share (``PipelineTesterMixin.required_optional_params``,
#: with the current callback API).
COMMON_CALL_ARGUMENTS = (
    "prompt",
    "num_inference_steps",
    "guidance_scale",
    "num_images_per_prompt",
    "generator",
    "latents",
    "output_type",
    "return_dict",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_autoencoder_tiny(seed: int = 0) -> AutoencoderTiny:
    """TAESD's architecture at test size (four levels: 8 pixels per latent cell, 4 channels),
    random weights."""
    torch.manual_seed(seed)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    ).eval()


class PipelineConventions:
    """diffusers' pipeline conventions; subclasses fill in the four hooks below."""

    pipeline_class: Any
    #: ``pipe._callback_tensor_inputs`` as diffusers' callbacks will read it.
    callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds")
    steps = 2

    # ---- hooks ---------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        raise NotImplementedError

    def inputs(self) -> dict[str, Any]:
        """One output image's arguments (no generator, no output type)."""
        raise NotImplementedError

    def batched(self, inputs: dict[str, Any], prompts: list[str]) -> dict[str, Any]:
        """``inputs`` for a batch of ``prompts``."""
        return {**inputs, "prompt": prompts}

    def encode_text(self, pipe: Any) -> torch.Tensor:
        """The pipeline's text embedding of one prompt (its own encode method)."""
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    def pipe(self):
        p = self.pipeline_class(**self.components())
        p.set_progress_bar_config(disable=True)
        return p

    def run(self, pipe: Any, seed: int | None = 0, **kw: Any) -> Any:
        args = {"num_inference_steps": self.steps, "output_type": "latent", **self.inputs()}
        if seed is not None:
            args["generator"] = gen(seed)
        return pipe(**{**args, **kw}).images

    # ---- the checks ----------------------------------------------------------------------
    def test_call_signature_and_callback_inputs(self, pipe):
        names = set(inspect.signature(self.pipeline_class.__call__).parameters)
        assert not [a for a in COMMON_CALL_ARGUMENTS if a not in names]
        assert tuple(pipe._callback_tensor_inputs) == self.callback_tensor_inputs

    def test_text_encoder_only_pipeline(self, pipe, tmp_path):
        """``vae=None, unet=None`` builds (or loads) a pipeline whose text encoding is the full
        one's."""
        text_only = self.pipeline_class(**{**self.components(), "vae": None, "unet": None})
        assert text_only.vae is None and text_only.unet is None
        torch.testing.assert_close(self.encode_text(text_only), self.encode_text(pipe))
        pipe.save_pretrained(tmp_path / "full")
        loaded = self.pipeline_class.from_pretrained(tmp_path / "full", vae=None, unet=None)
        assert loaded.vae is None and loaded.unet is None
        torch.testing.assert_close(self.encode_text(loaded), self.encode_text(pipe))

    def test_save_load_round_trip(self, pipe, tmp_path):
        pipe.save_pretrained(tmp_path / "saved")
        loaded = self.pipeline_class.from_pretrained(tmp_path / "saved")
        loaded.set_progress_bar_config(disable=True)
        torch.testing.assert_close(self.run(loaded), self.run(pipe), atol=0, rtol=0)

    def test_batch_equals_single(self, pipe):
        single = [self.run(pipe, seed=s, prompt=p) for s, p in ((0, "a"), (1, "b"))]
        batch = self.run(
            pipe, seed=None, generator=[gen(0), gen(1)], **self.batched({}, ["a", "b"])
        )
        torch.testing.assert_close(batch, torch.cat(single), atol=1e-4, rtol=1e-4)

    def test_latents_argument(self, pipe):
        """``latents`` is the starting noise: the noise ``generator`` would draw gives the same
        result (the generator, advanced past it, still feeds a stochastic sampler), other noise
        another one, a wrong shape one clear error."""
        drawn = self.run(pipe, seed=5)
        shape = tuple(drawn.shape)
        g = gen(5)
        same = self.run(pipe, seed=None, generator=g, latents=torch.randn(shape, generator=g))
        torch.testing.assert_close(same, drawn, atol=0, rtol=0)
        g = gen(5)
        other = self.run(pipe, seed=None, generator=g, latents=torch.randn(shape, generator=gen(6)))
        assert not torch.allclose(other, drawn)
        with pytest.raises(InputError, match="latents"):
            self.run(pipe, seed=None, latents=torch.zeros(1, 4, 3, 3))

    def test_callback_sees_the_named_tensors_and_replaces_them(self, pipe):
        for names in [[n] for n in self.callback_tensor_inputs] + [
            list(self.callback_tensor_inputs)
        ]:
            seen = []

            def record(p, i, t, kwargs, names=names, seen=seen):
                assert p is pipe
                seen.append((i, sorted(kwargs)))
                return kwargs

            self.run(pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=names)
            assert seen == [(i, sorted(names)) for i in range(self.steps)]

        def zero_last(p, i, t, kwargs):
            if i == p.num_timesteps - 1:
                kwargs["latents"] = torch.zeros_like(kwargs["latents"])
            return kwargs

        out = self.run(pipe, callback_on_step_end=zero_last)
        assert out.abs().max() == 0
        with pytest.raises(InputError, match="callback_on_step_end_tensor_inputs"):
            self.run(pipe, callback_on_step_end=zero_last, callback_on_step_end_tensor_inputs=["x"])

    def test_callback_changes_guidance_scale(self, pipe):
        """diffusers' ``test_callback_cfg``: the scale is read at every step."""
        start = self.inputs()["guidance_scale"]

        def increase(p, i, t, kwargs):
            p._guidance_scale += 1.0
            return kwargs

        changed = self.run(pipe, callback_on_step_end=increase)
        assert pipe.num_timesteps == self.steps
        assert pipe.guidance_scale == start + pipe.num_timesteps
        assert not torch.allclose(changed, self.run(pipe))

    def test_sd_cfg_cutoff_callback_keeps_the_conditional_text(self, pipe):
        """After ``SDCFGCutoffCallback``'s step one branch runs, on the conditional text."""
        calls = []

        def record(module, args, kwargs, output):
            ctx = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            calls.append(ctx.clone())

        handle = pipe.unet.register_forward_hook(record, with_kwargs=True)
        try:
            self.run(
                pipe,
                callback_on_step_end=SDCFGCutoffCallback(
                    cutoff_step_ratio=None, cutoff_step_index=0
                ),
            )
        finally:
            handle.remove()
        assert pipe.guidance_scale == 0.0 and not pipe.do_classifier_free_guidance
        first, later = calls[0], calls[1:]
        assert first.shape[0] > 1 and len(later) == self.steps - 1
        for ctx in later:
            assert ctx.shape[0] == 1
            torch.testing.assert_close(ctx[0], first[-1])  # the conditional rows come last
            assert not torch.allclose(ctx[0], first[0])

    def test_swapped_autoencoder_tiny(self, pipe):
        """``AutoencoderTiny`` (TAESD) as the VAE: the images are its decoding of the latents."""
        swapped = self.pipeline_class(**{**self.components(), "vae": tiny_autoencoder_tiny()})
        swapped.set_progress_bar_config(disable=True)
        latents = self.run(swapped)
        images = self.run(swapped, output_type="pt")
        with torch.no_grad():
            decoded = swapped.vae.decode(latents / swapped.vae.config.scaling_factor).sample
        torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
