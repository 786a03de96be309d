"""InstantPortrait's editor on Qwen-Image-Edit: one step (the student) or the teacher's steps.

``QwenEditPipeline`` loads a ``QwenImageEditPipeline`` folder (``Qwen/Qwen-Image-Edit``, or
``init-tiny --kind qwen-edit``) and edits through the
:class:`~instantportrait.backbones.qwen_edit.QwenEditBackbone`:

* ``num_inference_steps=1``: the one-step student at sigma = 1 on pure noise,
  ``x0_hat = eps - v_hat`` (spec: IPNet on the DiT). diffusers cannot run one step with the
  published scheduler (its ``shift_terminal`` stretch divides by ``1 - sigma_last = 0`` and
  every sigma is NaN), so the student never asks the scheduler: its one Euler step from 1 to 0
  is ``x0_hat``, which the parity test checks against diffusers with the stretch off;
* more steps: the teacher, sampled with its own flow-matching Euler scheduler (exponential
  resolution-dependent shift, ``shift_terminal`` 0.02) and true CFG with the norm-preserving
  rescale, exactly as diffusers' ``QwenImageEditPipeline`` does (tested to 1e-6 on the same
  components and seeds);
* ``iterations=2``: style boost, the output fed back as the next input (and re-read by the VL
  encoder).

Guidance is true classifier-free guidance: ``guidance_scale`` is diffusers' ``true_cfg_scale``
(default 4.0, the model card's) and the negative prompt defaults to ``" "`` (the model card's),
so the published teacher runs as its card shows; ``guidance_scale=1`` switches it off (one
transformer call a step). The edit image is resized to the output size and read at that size
by both the VAE and the VL encoder; diffusers instead resizes it to about 1 MP whatever the
output size (the two agree when the output is about 1 MP). Its call takes the arguments the
CLI, the app, the ComfyUI node and the evaluation harness pass (``resolution``,
``num_images_per_prompt``, ``None`` for the folder's defaults), so they drive it as the other
editors.

A ``QwenImageEditPlusPipeline`` folder (``Qwen/Qwen-Image-Edit-2509`` or ``-2511``, or
``init-tiny --kind qwen-edit-plus``) loads with ``plus=True`` (stored in the config): the
backbone's ``Picture 1:`` prompt template, the VL encoder reading the input resized to about
384 x 384 (diffusers' condition image, from the input, whatever the output size), the VAE
reading it at the output size as above (diffusers: about 1 MP), and the cards' 40 steps. The
teacher then equals diffusers' ``QwenImageEditPlusPipeline`` for one image where the VAE sizes
agree (tested).
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import QwenImageLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor

from ..backbones.qwen_edit import QwenEditBackbone, condition_image_size
from ..errors import InputError, MissingDependencyError
from ..io import load_image
from .dit_edit import DiTEditMixin
from .kontext_edit import KontextEditOutput

__all__ = [
    "QwenEditPipeline",
    "TEACHER_STEPS",
    "PLUS_TEACHER_STEPS",
    "DEFAULT_TRUE_CFG",
    "DEFAULT_NEGATIVE_PROMPT",
    "check_zero_cond_t",
]

#: The model card's settings: 50 steps, ``true_cfg_scale`` 4.0, negative prompt ``" "``.
TEACHER_STEPS = 50
#: Qwen-Image-Edit-2509's card: 40 steps (same scale and negative prompt).
PLUS_TEACHER_STEPS = 40
#: ``model_index.json`` ``_class_name`` of the 2509/2511 folders.
PLUS_PIPELINE_CLASS = "QwenImageEditPlusPipeline"
DEFAULT_TRUE_CFG = 4.0
DEFAULT_NEGATIVE_PROMPT = " "


def check_zero_cond_t(folder: Any, transformer: Any) -> None:
    """Refuse, in one line, a 2511 folder (``zero_cond_t`` in ``transformer/config.json``)
    whose transformer was built without it: a diffusers release older than the flag drops the
    unknown config key with a log line and would edit with the wrong modulation."""
    import json
    from pathlib import Path

    config = Path(str(folder)) / "transformer" / "config.json"
    try:
        wanted = bool(json.loads(config.read_text()).get("zero_cond_t", False))
    except (OSError, ValueError, AttributeError):
        return
    if wanted and not getattr(transformer, "zero_cond_t", False):
        import diffusers

        raise MissingDependencyError(
            f"{folder}: its transformer sets zero_cond_t (Qwen-Image-Edit-2511), which diffusers "
            f"{diffusers.__version__} ignores; upgrade diffusers (0.42 knows it)"
        )


class QwenEditPipeline(DiTEditMixin, DiffusionPipeline, QwenImageLoraLoaderMixin):
    """Instruction editing with Qwen-Image-Edit's components (diffusers' names).

    ``recommended_steps``, ``default_guidance_scale`` and ``default_negative_prompt`` (stored in
    ``model_index.json``): what runs when the call leaves them out. ``plus``: the 2509/2511
    releases' conditioning (module doc); :meth:`from_pretrained` sets it from the folder.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        processor: Any,
        transformer: Any,
        recommended_steps: int = TEACHER_STEPS,
        default_guidance_scale: float = DEFAULT_TRUE_CFG,
        default_negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        plus: bool = False,
    ) -> None:
        super().__init__()
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            processor=processor,
            transformer=transformer,
        )
        self.register_to_config(
            recommended_steps=int(recommended_steps),
            default_guidance_scale=float(default_guidance_scale),
            default_negative_prompt=str(default_negative_prompt),
            plus=bool(plus),
        )
        self.backbone = QwenEditBackbone(
            transformer, vae, text_encoder, tokenizer, processor, plus=bool(plus)
        )
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.backbone.vae_scale_factor * 2
        )
        self._num_timesteps = 0
        self._guidance_scale = float(default_guidance_scale)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        """diffusers' loading, with the processor read by
        :class:`~instantportrait.backbones.qwen_vl_processor.QwenVLImageTextProcessor` (the
        folder names transformers' ``Qwen2VLProcessor``, which needs torchvision); a
        ``QwenImageEditPlusPipeline`` folder (2509/2511) loads with ``plus=True`` and 40
        recommended steps unless ``kwargs`` say otherwise."""
        from pathlib import Path

        from ..backbones import pipeline_class
        from ..backbones.qwen_vl_processor import QwenVLImageTextProcessor

        folder = Path(str(pretrained_model_name_or_path))
        if pipeline_class(folder) == PLUS_PIPELINE_CLASS:
            kwargs.setdefault("plus", True)
            kwargs.setdefault("recommended_steps", PLUS_TEACHER_STEPS)
        if "processor" not in kwargs and (folder / "processor").is_dir():
            kwargs["processor"] = QwenVLImageTextProcessor.from_pretrained(
                str(folder / "processor")
            )
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        check_zero_cond_t(folder, pipe.transformer)
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        iterations: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        resolution: int | None = None,
        num_images_per_prompt: int = 1,
        image_guidance_scale: float | None = None,
        timestep: int | None = None,
    ) -> Any:
        """Edit ``image`` by ``prompt``.

        Args:
            image: a PIL image, path or array (or a list, one per prompt).
            num_inference_steps: 1 runs the one-step student at sigma = 1; more run the
                teacher; default the folder's ``recommended_steps``.
            guidance_scale: the true-CFG scale (diffusers' ``true_cfg_scale``; default the
                folder's, 4.0); 1 or less runs the prompt branch alone.
            negative_prompt: the CFG branch's prompt (default the folder's, ``" "``).
            height, width: output size (default the image's, rounded down to a multiple of 16).
            resolution: the long side the input is resized to (multiple of 16 kept), unless
                ``height``/``width`` are given; ``None`` keeps the input's size.
            num_images_per_prompt: outputs per (prompt, image) pair, each with its own noise.
            image_guidance_scale, timestep: the InstructPix2Pix editor's arguments;
                Qwen-Image-Edit has no image guidance and samples the student at sigma = 1, so
                anything but ``None`` is refused in one line.
            latents: the starting noise ``(B, 16, h, w)`` (unpacked), instead of drawing it.
            iterations: style boost: run the edit again on its own output.
            output_type: ``pil``, ``np``, ``pt`` or ``latent``.
        """
        for name, value in (("image_guidance_scale", image_guidance_scale), ("timestep", timestep)):
            if value is not None:
                raise InputError(f"{name}: not used by a Qwen-Image-Edit model; leave it out")
        steps = num_inference_steps or self.recommended_steps
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
        if steps < 1 or iterations < 1:
            raise InputError("num_inference_steps and iterations: at least 1")
        per = num_images_per_prompt
        if not isinstance(per, int) or per < 1:
            raise InputError(f"num_images_per_prompt: a positive integer, got {per}")
        batch = len(prompts) * per
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise InputError(f"generator: {len(generator)} generators for {batch} images")
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        self._guidance_scale = float(guidance_scale)
        negatives = None
        if self._guidance_scale > 1:
            neg = (
                self.config.default_negative_prompt if negative_prompt is None else negative_prompt
            )
            negatives = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
            if len(negatives) != len(prompts):
                raise InputError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        device = self._execution_device
        dtype = self.transformer.dtype
        height, width = self._size(images[0], height, width, resolution)
        result = None
        for it in range(iterations):
            # Lanczos from the input (diffusers' resize): the VAE's image at the output size; the
            # VL encoder reads it too, or (plus) its own ~384 x 384 one
            vl_images = [self._condition_image(im) for im in images]
            images = [self.image_processor.resize(im, height, width) for im in images]
            if not self.config.plus:
                vl_images = images
            cond = self.backbone.encode_prompt(prompts, vl_images, negatives).repeat(per)
            pixels = self.image_processor.preprocess(images, height, width)
            image_latents = self.backbone.encode_image(pixels.to(device)).to(dtype)
            image_latents = image_latents.repeat_interleave(per, 0)
            shape = (batch, image_latents.shape[1], *image_latents.shape[-2:])
            if latents is not None and it == 0:
                if tuple(latents.shape) != shape:
                    raise InputError(f"latents: expected {shape}, got {tuple(latents.shape)}")
                x = latents.to(device, dtype)
            else:
                x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            result = self._denoise(x, cond, image_latents, steps, callback_on_step_end)
            if it + 1 < iterations:
                decoded = self.backbone.decode(result).float().clamp(-1, 1)
                images = self.image_processor.postprocess(decoded, output_type="pil")
                prompts = [p for p in prompts for _ in range(per)]
                negatives = (
                    None if negatives is None else [n for n in negatives for _ in range(per)]
                )
                per = 1
        if output_type == "latent":
            out: Any = result
        else:
            decoded = self.backbone.decode(result)
            out = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        return KontextEditOutput(images=out) if return_dict else (out,)

    def _condition_image(self, image: PIL.Image.Image) -> PIL.Image.Image | None:
        """The 2509/2511 VL encoder's image: the input at about 384 x 384 pixels, its aspect
        ratio kept (``None`` for the first release, whose encoder reads the VAE's image)."""
        if not self.config.plus:
            return None
        width, height = condition_image_size(*image.size)
        return self.image_processor.resize(image, height, width)

    def _denoise(self, x, cond, image_latents, steps: int, callback) -> torch.Tensor:
        g = self._guidance_scale
        if steps == 1:  # the one-step student: x0_hat at sigma = 1, no scheduler
            self._num_timesteps = 1
            sigma = torch.ones(1, device=x.device, dtype=x.dtype)
            v = self.backbone.predict(x, sigma, cond, image_latents, g)
            x = self.backbone.x0(x, sigma, v)
            if callback is not None:
                x = callback(self, 0, sigma * 1000, {"latents": x}).pop("latents", x)
            return x
        lh, lw = x.shape[-2:]
        self.sigmas(steps, (lh // 2) * (lw // 2))
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        for i, t in enumerate(self.progress_bar(timesteps)):
            sigma = t.to(x.dtype).reshape(1) / 1000  # diffusers' order: cast, then divide
            v = self.backbone.predict(x, sigma, cond, image_latents, g)
            x = self.scheduler.step(v, t, x, return_dict=False)[0]  # Euler, elementwise
            if callback is not None:
                out = callback(self, i, t, {"latents": x})
                x = out.pop("latents", x)
        return x
