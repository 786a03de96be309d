"""InstantPortraitPipeline: instruction-based portrait editing in one step (IPNet) or many
(IDE-Net, InstructPix2Pix).

The UNet takes ``noisy latent || encoded input image`` (8 channels), the InstructPix2Pix
format, so any InstructPix2Pix-format checkpoint loads. Two modes share one ``__call__``:

* **one step** (``num_inference_steps=1``, IPNet): start from pure noise at the student's
  timestep (``student_timestep``, default 999), predict the clean latent from the UNet output
  (:func:`~instantportrait.parameterization.predict_x0`; epsilon and v both handled), decode.
* **many steps** (IDE-Net, InstructPix2Pix): the scheduler's loop with InstructPix2Pix's
  text + image classifier-free guidance, the three branches batched in one UNet call.

``iterations=k`` is InstantPortrait's *style boost* (§3.2.4): each pass's output is the next
pass's input image. The checkpoint records its recommended step count and guidance scales
(``save_pretrained`` writes them to ``model_index.json``): 1 step and no guidance for an
IPNet, 20 steps with scales 7.5 / 1.5 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.loaders import FromSingleFileMixin, StableDiffusionLoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..errors import InputError
from ..guidance import needs_three_branches
from ..io import (
    ImageSource,
    ResolutionPolicy,
    load_image,
)
from ..parameterization import predict_x0
from .edit_guidance import EditGuidanceMixin
from .edit_inputs import EditInputsMixin
from .edit_loading import EditLoadingMixin
from .edit_sampling import EditSamplingMixin, TensorsCallback
from .edit_support import (
    NOT_LOADED_COMPONENTS,
    SAFETY_CHECKER_POLICY,
    InstantPortraitPipelineOutput,
    image_to_tensor,
    tensor_to_images,
)
from .step_callbacks import StepCallback
from .vae_latents import encode_raw, from_diffusion_latents, vae_scale_factor

__all__ = [
    "NOT_LOADED_COMPONENTS",
    "SAFETY_CHECKER_POLICY",
    "InstantPortraitPipeline",
    "InstantPortraitPipelineOutput",
    "image_to_tensor",
    "tensor_to_images",
]

PromptInput = str | Sequence[str]
GeneratorInput = torch.Generator | Sequence[torch.Generator] | None


class InstantPortraitPipeline(
    EditLoadingMixin,
    EditInputsMixin,
    EditSamplingMixin,
    EditGuidanceMixin,
    DiffusionPipeline,
    StableDiffusionLoraLoaderMixin,
    FromSingleFileMixin,
):
    """Edit a portrait by instruction: one step with an IPNet, many with an IDE-Net.

    LoRA adapters load through diffusers' ``load_lora_weights`` (PEFT; UNet and text encoder:
    ``set_adapters``, ``fuse_lora``, ``unload_lora_weights`` as for Stable Diffusion);
    ``from_single_file`` reads one ``.safetensors`` checkpoint in the original (LDM) layout
    given ``config=`` a local diffusers folder of the same architecture. Speed features:
    :meth:`enable_speed`. Safety checker: see :data:`SAFETY_CHECKER_POLICY`.

    Args:
        vae: encodes the input image and decodes the result.
        text_encoder: CLIP text encoder for the instruction.
        tokenizer: its tokenizer.
        unet: ``UNet2DConditionModel`` with 8 input channels (noisy latent || image latent).
        scheduler: the multi-step sampler; its ``alphas_cumprod`` and ``prediction_type`` also
            serve the one-step mode.
        recommended_steps: steps used when ``num_inference_steps`` is not given (1 = IPNet).
        student_timestep: the timestep of the one-step mode.
        default_guidance_scale / default_image_guidance_scale: scales used when not given.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        recommended_steps: int = 20,
        student_timestep: int = 999,
        default_guidance_scale: float = 7.5,
        default_image_guidance_scale: float = 1.5,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.register_to_config(
            recommended_steps=int(recommended_steps),
            student_timestep=int(student_timestep),
            default_guidance_scale=float(default_guidance_scale),
            default_image_guidance_scale=float(default_image_guidance_scale),
        )
        self.vae_scale_factor = vae_scale_factor(vae)

    # Config values as plain attributes (diffusers' attribute fallback to the config warns of a
    # deprecation on every read).
    @property
    def recommended_steps(self) -> int:
        """Steps used when ``num_inference_steps`` is not given (1 = IPNet)."""
        return int(self.config.recommended_steps)

    @property
    def student_timestep(self) -> int:
        """The timestep of the one-step mode."""
        return int(self.config.student_timestep)

    @property
    def default_guidance_scale(self) -> float:
        """Text guidance used when ``guidance_scale`` is not given."""
        return float(self.config.default_guidance_scale)

    @property
    def default_image_guidance_scale(self) -> float:
        """Image guidance used when ``image_guidance_scale`` is not given."""
        return float(self.config.default_image_guidance_scale)

    # ------------------------------------------------------------------ the model
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image latents as InstructPix2Pix conditions on them: the raw (unscaled) latent, the
        posterior's mode for a KL VAE, the latents of ``AutoencoderTiny`` (as diffusers'
        InstructPix2Pix pipeline reads them)."""
        where = self._placement()
        image = image.to(device=where.vae_device, dtype=where.vae_dtype)
        vae = self.vae
        if not isinstance(vae, AutoencoderKL) or vae.use_slicing or vae.use_tiling:
            return encode_raw(vae, image).to(where.unet_dtype)
        # The posterior's mode is the mean: the first half of the moments. Reading it directly
        # skips building the distribution (its std and var: four tensor operations of host
        # time per call). Other autoencoders, slicing and tiling go through ``vae.encode``.
        moments = vae.encoder(image)
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
        return moments[:, : moments.shape[1] // 2].to(where.unet_dtype)

    def decode_latents(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Clean latents to images in [-1, 1] (by :meth:`set_latent_decoder`'s decoder if set);
        ``clamp=False`` leaves the clamping to the caller (the output conversion does it)."""
        decoder = getattr(self, "_latent_decoder", None)
        if decoder is None:
            where = self._placement()
            decoder, device, dtype = self.vae, where.vae_device, where.vae_dtype
        else:
            first = next(decoder.parameters())
            device, dtype = first.device, first.dtype
        latents = from_diffusion_latents(decoder, latents.to(device=device, dtype=dtype))
        images = decoder.decode(latents, return_dict=False)[0]
        return images.clamp(-1, 1) if clamp else images

    def set_latent_decoder(self, decoder: torch.nn.Module | None) -> None:
        """Decode with ``decoder`` instead of the VAE (``None`` goes back to the VAE).

        ``decoder`` is a diffusers autoencoder whose ``decode(latents / scaling_factor)``
        returns images in [-1, 1], e.g. ``AutoencoderTiny`` (TAESD, `madebyollin/taesd`), whose
        decoder costs a small fraction of the VAE's: the fast path for real-time editing. The
        input image is still encoded by the VAE (the UNet is conditioned on its latents). It is
        moved to the VAE's device and dtype now (call again after moving the pipeline) and is
        not saved by :meth:`save_pretrained`.
        """
        if decoder is not None:
            where = self._placement()
            decoder = decoder.to(device=where.vae_device, dtype=where.vae_dtype).eval()
        self._latent_decoder = decoder

    # ------------------------------------------------------------------ call
    def _edit(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        generator: GeneratorInput,
        steps: int,
        iterations: int,
        g_text: float,
        g_image: float,
        timestep: int | None,
        output_type: str,
        callback: TensorsCallback | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Edit one batch of same-size pixels ``x`` in [-1, 1]: latents or decoded images.

        ``latents`` (optional) is the first pass's starting noise; later style-boost passes
        draw theirs from ``generator``. The guidance state (scales, and whether a callback
        turned guidance off) carries from pass to pass.
        """
        device = x.device
        self._set_guidance(g_text, g_image)
        out = x
        for n in range(iterations):
            image_latents = self.encode_image(x)
            if n == 0 and latents is not None:
                noise = latents.to(device=device, dtype=image_latents.dtype)
            else:
                noise = randn_tensor(
                    image_latents.shape,
                    generator=generator,
                    device=device,
                    dtype=image_latents.dtype,
                )
            offset = n * steps
            step_callback = None
            if callback is not None:

                def step_callback(i, t, tensors, offset=offset):
                    return callback(offset + i, t, tensors)

            if self.do_classifier_free_guidance:
                branches = self._three_branches(image_latents, cond, uncond)
            else:
                branches = (image_latents, cond)
            if steps == 1:
                t = self.student_timestep if timestep is None else int(timestep)
                t_tensor, ab = self._one_step_constants(t, noise)
                pred = self._guided(
                    noise, t_tensor, branches, self.guidance_scale, self.image_guidance_scale
                )
                out = predict_x0(pred, noise, ab, self.scheduler.config.prediction_type)
                if step_callback is not None:
                    out, branches = self._after_callback(step_callback, 0, t, out, branches)
            else:
                out, branches = self._denoise(noise, branches, steps, generator, step_callback)
            if not self.do_classifier_free_guidance:
                cond = branches[1]  # the conditional text (a callback may have replaced it)
            if output_type == "latent" and n == iterations - 1:
                return out
            # The last pass's images are clamped by the conversion to the output type.
            x = self.decode_latents(out, clamp=n < iterations - 1)
        return x

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptInput | None = None,
        image: ImageSource | Sequence[ImageSource] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        iterations: int = 1,
        generator: GeneratorInput = None,
        output_type: str = "pil",
        negative_prompt: PromptInput | None = None,
        resolution: int | None = 512,
        timestep: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        return_dict: bool = True,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        latents: torch.Tensor | None = None,
    ):
        """Edit ``image`` by ``prompt``.

        Args:
            prompt: the instruction, or a list (a batch).
            image: the portrait(s): path, bytes, PIL, numpy, tensor (``(3, H, W)`` in [0, 1])
                or a list; a ``(B, 3, H, W)`` tensor is a batch. One prompt with many images
                (or the reverse) is broadcast. Inputs of different sizes are edited in groups
                of one size (each at its own size); the results keep the input order.
            num_inference_steps: 1 = one-step mode; default the checkpoint's recommended count.
            guidance_scale: text guidance s_T (default from the checkpoint: 7.5, IPNet 1).
            image_guidance_scale: image guidance s_I (default 1.5, IPNet 1).
            iterations: style boost passes; each output is the next input (§3.2.4).
            generator: a generator, or one per output image (then a batch equals its items run
                one by one with the same generators, whatever their sizes).
            output_type: ``pil`` (default), ``np``, ``pt`` or ``latent``. With inputs of
                different sizes ``np``/``pt``/``latent`` give a list of per-image arrays.
            negative_prompt: replaces the empty prompt of the unconditional branches.
            resolution: long side the input is resized to (multiple of 8 kept); ``None`` keeps
                the input's size rounded to a multiple of 8. At most
                :data:`~instantportrait.io.MAX_RESOLUTION`.
            timestep: the one-step mode's timestep (default ``student_timestep``).
            prompt_embeds / negative_prompt_embeds: precomputed text embeddings
                (:meth:`encode_prompt`), e.g. to encode a prompt once for a video.
            num_images_per_prompt: outputs per (prompt, image) pair, each with its own noise;
                the outputs of a pair are adjacent.
            height / width: the exact size the model edits at (multiples of 8), overriding
                ``resolution``; one alone keeps the aspect ratio.
            callback_on_step_end: ``fn(pipe, step_index, timestep, callback_kwargs) -> dict``
                after each denoising step (style-boost passes continue the step count), or a
                ``diffusers.callbacks`` callback such as ``SDCFGCutoffCallback``;
                ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs`` (``latents``, ``prompt_embeds``,
                ``image_latents``: :mod:`~instantportrait.pipelines.edit_sampling`); returned
                tensors replace the pipeline's. ``pipe.guidance_scale``,
                ``pipe.image_guidance_scale``, ``pipe.num_timesteps`` and
                ``pipe.do_classifier_free_guidance`` are readable during the call.
            latents: the starting noise, ``(batch, 4, H/8, W/8)`` for the ``batch`` output
                images (inputs of one size); style-boost passes after the first draw theirs
                from ``generator``.
        """
        steps = int(num_inference_steps or self.recommended_steps)
        self.check_inputs(prompt, image, steps, iterations, output_type, prompt_embeds)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InputError(
                f"num_images_per_prompt: a positive integer, got {num_images_per_prompt}"
            )
        self._check_size_arguments(height, width, resolution)
        names = self.callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        g_text = self.default_guidance_scale if guidance_scale is None else guidance_scale
        g_image = (
            self.default_image_guidance_scale
            if image_guidance_scale is None
            else image_guidance_scale
        )
        n_embeds = None if prompt_embeds is None else prompt_embeds.shape[0]
        prompts, sources = self._as_batch(prompt, image, n_embeds)
        policy = ResolutionPolicy(long_side=resolution)
        where = self._placement()
        # Pinned for the call: the encoders and decoders below read it without re-checking.
        self._pinned_placement = where
        try:
            device = where.device
            pixels = []
            for i, s in enumerate(sources):
                img = load_image(s, name=f"image[{i}]")
                size = self._target_size(policy, img.size, height, width)
                if size != img.size:
                    img = img.resize(size, Image.Resampling.LANCZOS)
                pixels.append(image_to_tensor(img))
            per = num_images_per_prompt
            batch = len(pixels) * per
            if isinstance(generator, (list, tuple)) and len(generator) != batch:
                raise InputError(
                    f"generator: {len(generator)} generators for {batch} output images"
                )

            # The unconditional text is encoded only when a guided (three-branch) call needs it.
            guided = needs_three_branches(g_text, g_image)
            if prompt_embeds is None and guided:
                cond, uncond = self.encode_prompt(prompts, device, negative_prompt)
            elif prompt_embeds is None:
                cond = uncond = self._text_embeddings(prompts, device)
            else:
                cond = prompt_embeds.to(device=device, dtype=where.unet_dtype)
                if negative_prompt_embeds is None:
                    negative_prompt_embeds = self._text_embeddings([""], device) if guided else cond
                uncond = negative_prompt_embeds.to(device=device, dtype=where.unet_dtype)
            n_items = len(pixels)
            if cond.shape[0] == 1 and n_items > 1:
                cond = cond.expand(n_items, -1, -1)
            if uncond.shape[0] != n_items:
                uncond = uncond[:1].expand(n_items, -1, -1)

            if latents is not None:
                sizes = {tuple(px.shape[-2:]) for px in pixels}
                f = self.vae_scale_factor
                shape = (batch, self.unet.config.out_channels)
                if len(sizes) == 1:
                    h, w = sizes.pop()
                    shape = (*shape, h // f, w // f)
                if len(shape) == 2 or tuple(latents.shape) != shape:
                    raise InputError(
                        f"latents: expected shape {shape if len(shape) == 4 else 'one size'}"
                        f" for inputs of one size, got {tuple(latents.shape)}"
                    )
            self._num_timesteps = steps * iterations
            callback = None
            if names:

                def callback(i: int, t: Any, tensors: dict[str, torch.Tensor]):
                    return self.run_step_callback(callback_on_step_end, names, i, t, tensors)

            # Items of one size form one batch (the common case: all of them).
            groups: dict[tuple[int, ...], list[int]] = {}
            for i, px in enumerate(pixels):
                groups.setdefault(tuple(px.shape), []).append(i)
            if len(groups) == 1 and per == 1:  # the common case: one batch, in order
                g = generator
                out = self._edit(
                    torch.cat(pixels).to(device) if n_items > 1 else pixels[0].to(device),
                    cond,
                    uncond,
                    g,
                    steps,
                    iterations,
                    g_text,
                    g_image,
                    timestep,
                    output_type,
                    callback,
                    latents,
                )
                self.maybe_free_model_hooks()
                images = out if output_type == "latent" else tensor_to_images(out, output_type)
                return InstantPortraitPipelineOutput(images=images) if return_dict else (images,)
            results: list[torch.Tensor | None] = [None] * batch
            for members in groups.values():
                rows = [i * per + k for i in members for k in range(per)]
                x = torch.cat([pixels[i] for i in members]).to(device)
                c, u = cond, uncond
                if per > 1 or len(members) != n_items:
                    index = [i for i in members for _ in range(per)]
                    x = x.repeat_interleave(per, dim=0)
                    c, u = cond[index], uncond[index]
                g = (
                    [generator[r] for r in rows]
                    if isinstance(generator, (list, tuple))
                    else generator
                )
                lat = None if latents is None else latents[rows]
                out = self._edit(
                    x,
                    c,
                    u,
                    g,
                    steps,
                    iterations,
                    g_text,
                    g_image,
                    timestep,
                    output_type,
                    callback,
                    lat,
                )
                for r, o in zip(rows, out):
                    results[r] = o

            self.maybe_free_model_hooks()
            if len(groups) == 1:
                stacked = torch.stack(results)  # type: ignore[arg-type]
                images = (
                    stacked if output_type == "latent" else tensor_to_images(stacked, output_type)
                )
            elif output_type == "latent":
                images = [r[None] for r in results]  # type: ignore[index]
            else:
                parts = [tensor_to_images(r[None], output_type) for r in results]  # type: ignore[index]
                images = [p[0] for p in parts]
            if not return_dict:
                return (images,)
            return InstantPortraitPipelineOutput(images=images)
        finally:
            self.__dict__.pop("_pinned_placement", None)
