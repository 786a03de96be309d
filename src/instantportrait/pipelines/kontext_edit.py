"""InstantPortrait's editor on FLUX.1 Kontext: one step (the student) or the teacher's steps.

``KontextEditPipeline`` loads a ``FluxKontextPipeline`` folder (``black-forest-labs/
FLUX.1-Kontext-dev`` or a one-step student exported from it) and edits through the
:class:`~instantportrait.backbones.flux_kontext.FluxKontextBackbone`:

* ``num_inference_steps=1``: the one-step student at sigma = 1 on pure noise,
  ``x0_hat = eps - v_hat`` (spec: IPNet on the DiT);
* more steps: the teacher, sampled with its own flow-matching Euler scheduler, FLUX's
  resolution-dependent shift and the distilled guidance scale, exactly as diffusers'
  ``FluxKontextPipeline`` does (tested to 1e-4 on the same components and seeds);
* ``iterations=2``: style boost, the output fed back as the next input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from ..backbones.flux_kontext import FluxKontextBackbone, flux_shift_mu
from ..errors import InputError

__all__ = ["KontextEditPipeline", "KontextEditOutput"]


class KontextEditOutput(dict):
    """``images`` (PIL list, arrays or a tensor, by ``output_type``)."""

    @property
    def images(self) -> Any:
        return self["images"]


class KontextEditPipeline(DiffusionPipeline):
    """Instruction editing with FLUX.1 Kontext's components (diffusers' names)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        transformer: Any,
        image_encoder: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.backbone = FluxKontextBackbone(
            transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2
        )
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.backbone.vae_scale_factor * 2
        )
        self._num_timesteps = 0
        self._guidance_scale = 2.5

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    def _size(self, image: PIL.Image.Image, height: int | None, width: int | None) -> tuple:
        multiple = self.backbone.vae_scale_factor * 2
        w, h = image.size
        height, width = height or h, width or w
        if height < multiple or width < multiple:
            raise InputError(f"image size {width}x{height}: at least {multiple} px a side")
        return height // multiple * multiple, width // multiple * multiple

    def sigmas(self, steps: int, image_seq_len: int) -> torch.Tensor:
        """The teacher's noise levels for ``steps`` steps (descending, the final 0 included)."""
        cfg = self.scheduler.config
        mu = flux_shift_mu(
            image_seq_len,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return self.scheduler.sigmas

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: PIL.Image.Image | list[PIL.Image.Image],
        num_inference_steps: int = 1,
        guidance_scale: float = 2.5,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        iterations: int = 1,
        max_sequence_length: int = 512,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
    ) -> Any:
        """Edit ``image`` by ``prompt``.

        Args:
            num_inference_steps: 1 runs the one-step student at sigma = 1; more run the teacher.
            guidance_scale: FLUX's distilled guidance (the model card's 2.5; diffusers' 3.5).
            height, width: output size (default the image's, rounded down to a multiple of 16).
            latents: the starting noise ``(B, 16, h, w)`` (unpacked), instead of drawing it.
            iterations: style boost: run the edit again on its own output.
            output_type: ``pil``, ``np``, ``pt`` or ``latent``.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        images = [image] if isinstance(image, PIL.Image.Image) else list(image)
        if len(images) == 1 and len(prompts) > 1:
            images = images * len(prompts)
        if len(images) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(images)} images")
        if num_inference_steps < 1 or iterations < 1:
            raise InputError("num_inference_steps and iterations: at least 1")
        self._guidance_scale = float(guidance_scale)
        device = self._execution_device
        dtype = self.transformer.dtype
        height, width = self._size(images[0], height, width)
        cond = self.backbone.encode_prompt(prompts, max_sequence_length)
        pixels = self.image_processor.preprocess(
            self.image_processor.resize(images, height, width), height, width
        )
        result = None
        for it in range(iterations):
            image_latents = self.backbone.encode_image(pixels.to(device)).to(dtype)
            lh, lw = image_latents.shape[-2:]
            shape = (len(prompts), image_latents.shape[1], lh, lw)
            if latents is not None and it == 0:
                if tuple(latents.shape) != shape:
                    raise InputError(f"latents: expected {shape}, got {tuple(latents.shape)}")
                x = latents.to(device, dtype)
            else:
                x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            x = self._denoise(x, cond, image_latents, num_inference_steps, callback_on_step_end)
            result = x
            if it + 1 < iterations:
                pixels = self.backbone.decode(x).float().clamp(-1, 1)
        if output_type == "latent":
            out: Any = result
        else:
            decoded = self.backbone.decode(result)
            out = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        return KontextEditOutput(images=out) if return_dict else (out,)

    def _denoise(self, x, cond, image_latents, steps: int, callback) -> torch.Tensor:
        lh, lw = x.shape[-2:]
        image_seq_len = (lh // 2) * (lw // 2)
        sigmas = self.sigmas(steps, image_seq_len)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        for i, t in enumerate(self.progress_bar(timesteps)):
            sigma = (t / 1000).to(x.dtype).reshape(1)
            v = self.backbone.predict(x, sigma, cond, image_latents, self._guidance_scale)
            if steps == 1:  # the one-step student: x0_hat at sigma = 1
                x = self.backbone.x0(x, sigmas[0].to(x.device), v)
            else:  # the teacher: one Euler step of its velocity ODE (elementwise)
                x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if callback is not None:
                out = callback(self, i, t, {"latents": x})
                x = out.pop("latents", x)
        return x
