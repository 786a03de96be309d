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

Its call takes the arguments of :class:`~instantportrait.pipelines.InstantPortraitPipeline`
that the CLI, the app, the ComfyUI node and the evaluation harness pass (``resolution``,
``num_images_per_prompt``, ``None`` for the checkpoint's defaults), so they drive either
editor. A folder's ``recommended_steps`` (28 for the published teacher, 1 for an exported
student, :func:`~instantportrait.backbones.kontext_adapters.export_student`) is the step count
when none is given. LoRA files load through diffusers' ``load_lora_weights``.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import FluxLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor

from ..backbones.flux_kontext import FluxKontextBackbone
from ..errors import InputError
from ..io import load_image
from .dit_edit import DiTEditMixin

__all__ = ["KontextEditPipeline", "KontextEditOutput"]


class KontextEditOutput(dict):
    """``images`` (PIL list, arrays or a tensor, by ``output_type``)."""

    @property
    def images(self) -> Any:
        return self["images"]


#: The published teacher's step count (the model card's 28) and distilled guidance (2.5).
TEACHER_STEPS = 28
DEFAULT_GUIDANCE = 2.5


class KontextEditPipeline(DiTEditMixin, DiffusionPipeline, FluxLoraLoaderMixin):
    """Instruction editing with FLUX.1 Kontext's components (diffusers' names).

    ``recommended_steps`` (stored in ``model_index.json``): the steps run when none are given,
    :data:`TEACHER_STEPS` for the published folder, 1 for an exported one-step student.
    """

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
        recommended_steps: int = TEACHER_STEPS,
        default_guidance_scale: float = DEFAULT_GUIDANCE,
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
        self.register_to_config(
            recommended_steps=int(recommended_steps),
            default_guidance_scale=float(default_guidance_scale),
        )
        self.backbone = FluxKontextBackbone(
            transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2
        )
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.backbone.vae_scale_factor * 2
        )
        self._num_timesteps = 0
        self._guidance_scale = float(default_guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        iterations: int = 1,
        max_sequence_length: int = 512,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        resolution: int | None = None,
        num_images_per_prompt: int = 1,
        image_guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        timestep: int | None = None,
    ) -> Any:
        """Edit ``image`` by ``prompt``.

        Args:
            image: a PIL image, path or array (or a list, one per prompt).
            num_inference_steps: 1 runs the one-step student at sigma = 1; more run the
                teacher; default the folder's ``recommended_steps``.
            guidance_scale: FLUX's distilled guidance (default the folder's, the model card's
                2.5; diffusers' is 3.5).
            height, width: output size (default the image's, rounded down to a multiple of 16).
            resolution: the long side the input is resized to (multiple of 16 kept), unless
                ``height``/``width`` are given; ``None`` keeps the input's size.
            num_images_per_prompt: outputs per (prompt, image) pair, each with its own noise.
            image_guidance_scale, negative_prompt, timestep: the InstructPix2Pix editor's
                arguments; Kontext has no image guidance, no negative branch and samples the
                student at sigma = 1, so anything but ``None`` is refused in one line.
            latents: the starting noise ``(B, 16, h, w)`` (unpacked), instead of drawing it.
            iterations: style boost: run the edit again on its own output.
            output_type: ``pil``, ``np``, ``pt`` or ``latent``.
        """
        for name, value in (
            ("image_guidance_scale", image_guidance_scale),
            ("negative_prompt", negative_prompt),
            ("timestep", timestep),
        ):
            if value is not None:
                raise InputError(f"{name}: not used by a FLUX.1 Kontext model; leave it out")
        num_inference_steps = num_inference_steps or self.recommended_steps
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        images = image if isinstance(image, (list, tuple)) else [image]
        images = [
            im if isinstance(im, PIL.Image.Image) else load_image(im, name=f"image[{i}]")
            for i, im in enumerate(images)
        ]
        if len(images) == 1 and len(prompts) > 1:
            images = images * len(prompts)
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        if len(images) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(images)} images")
        if num_inference_steps < 1 or iterations < 1:
            raise InputError("num_inference_steps and iterations: at least 1")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InputError(
                f"num_images_per_prompt: a positive integer, got {num_images_per_prompt}"
            )
        if num_images_per_prompt > 1:  # the outputs of a pair are adjacent
            prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
            images = [im for im in images for _ in range(num_images_per_prompt)]
        if isinstance(generator, (list, tuple)) and len(generator) != len(prompts):
            raise InputError(f"generator: {len(generator)} generators for {len(prompts)} images")
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        self._guidance_scale = float(guidance_scale)
        device = self._execution_device
        dtype = self.transformer.dtype
        height, width = self._size(images[0], height, width, resolution)
        cond = self.backbone.encode_prompt(prompts, max_sequence_length)
        # Lanczos to the size, each image (diffusers' resize-then-preprocess, for a list)
        pixels = self.image_processor.preprocess(images, height, width)
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
            # the scheduler's timesteps live on the CPU: the transformer's time embedding
            # needs its input on the model's device
            sigma = (t / 1000).to(x.device, x.dtype).reshape(1)
            v = self.backbone.predict(x, sigma, cond, image_latents, self._guidance_scale)
            if steps == 1:  # the one-step student: x0_hat at sigma = 1
                x = self.backbone.x0(x, sigmas[0].to(x.device), v)
            else:  # the teacher: one Euler step of its velocity ODE (elementwise)
                x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if callback is not None:
                out = callback(self, i, t, {"latents": x})
                x = out.pop("latents", x)
        return x
