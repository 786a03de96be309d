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

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..errors import InputError, ModelNotFoundError
from ..guidance import instruct_pix2pix_guidance, needs_three_branches
from ..io import ImageSource, ResolutionPolicy, atomic_directory, check_prompt, load_image
from ..parameterization import predict_x0

PromptInput = str | Sequence[str]
GeneratorInput = torch.Generator | Sequence[torch.Generator] | None


class InstantPortraitPipelineOutput(BaseOutput):
    """``images``: PIL list, ``(B, H, W, 3)`` numpy in [0, 1], ``(B, 3, H, W)`` tensor in [0, 1],
    or latents (``output_type="latent"``)."""

    images: Any


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a ``(1, 3, H, W)`` float tensor in [-1, 1] (the VAE's range)."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_images(images: torch.Tensor, output_type: str) -> Any:
    """Decoded ``[-1, 1]`` images to the requested output type."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


def _split_images(image: Any) -> list[Any]:
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        return list(image)
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image)
    if isinstance(image, (list, tuple)):
        return list(image)
    return [image]


class _Placement(NamedTuple):
    """Where the pipeline computes: execution device, UNet dtype, VAE device and dtype."""

    device: torch.device
    unet_dtype: torch.dtype
    vae_device: torch.device
    vae_dtype: torch.dtype


def _first_parameter(module: Any) -> torch.Tensor | None:
    if not isinstance(module, torch.nn.Module):
        return None
    return next(module.parameters(), None)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


class InstantPortraitPipeline(DiffusionPipeline):
    """Edit a portrait by instruction: one step with an IPNet, many with an IDE-Net.

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
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ placement
    def _placement(self) -> _Placement:
        """Execution device and dtypes, resolved once and reused while nothing moved.

        diffusers' ``_execution_device`` and ``ModelMixin.device``/``.dtype`` walk every
        submodule looking for offloading and casting hooks: ~10 ms and ~3 ms per read on a
        real-size UNet, on the host, at every call. The answer is cached under a cheap
        fingerprint of each model (identity, first parameter's device and dtype, top-level
        offload hooks), so moving, casting, offloading or swapping a model resolves it again.
        """
        key = tuple(
            (
                id(module),
                None if (p := _first_parameter(module)) is None else (p.device, p.dtype),
                hasattr(module, "_hf_hook"),
                hasattr(module, "_diffusers_hook"),
            )
            for module in (self.unet, self.vae, self.text_encoder)
        )
        cached = self.__dict__.get("_placement_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        placement = _Placement(
            self._execution_device, self.unet.dtype, self.vae.device, self.vae.dtype
        )
        self._placement_cache = (key, placement)
        return placement

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load from a local diffusers folder or a Hub id; one clear line when not found.

        Any InstructPix2Pix-format checkpoint loads (e.g. ``timbrooks/instruct-pix2pix``);
        components it has beyond ours (safety checker, feature extractor) are ignored.
        """
        name = str(pretrained_model_name_or_path)
        path = Path(name).expanduser()
        how = (
            "pass a local diffusers pipeline folder (`instantportrait init-tiny DIR` makes one) "
            "or a Hub id such as timbrooks/instruct-pix2pix on a machine that reaches the Hub"
        )
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelNotFoundError(f"{name}: folder has no model_index.json; {how}")
        elif path.exists():
            raise ModelNotFoundError(f"{name}: not a folder; {how}")
        elif not _looks_like_hub_id(name):
            raise ModelNotFoundError(f"{name}: no such folder; {how}")
        try:
            return super().from_pretrained(name, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(
                f"{name}: could not load the pipeline{offline}: {first[:200]}; {how}"
            ) from exc

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save as safetensors into ``save_directory`` atomically (temp folder, then rename)."""
        kwargs.setdefault("safe_serialization", True)
        with atomic_directory(save_directory, overwrite=True) as tmp:
            super().save_pretrained(tmp, **kwargs)

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        prompt: PromptInput | None,
        image: Any,
        num_inference_steps: int,
        iterations: int,
        output_type: str,
        prompt_embeds: torch.Tensor | None,
    ) -> None:
        """Raise :class:`InputError` with one line for any invalid argument."""
        if prompt is None and prompt_embeds is None:
            raise InputError("prompt: give `prompt` or `prompt_embeds`")
        if image is None:
            raise InputError("image: an input image is required")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise InputError(
                f"num_inference_steps: must be a positive integer, got {num_inference_steps}"
            )
        if not isinstance(iterations, int) or iterations < 1:
            raise InputError(f"iterations: must be a positive integer, got {iterations}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type: one of pil, np, pt, latent; got {output_type!r}")

    def _as_batch(
        self, prompt: PromptInput | None, image: Any, n_embeds: int | None
    ) -> tuple[list[str] | None, list[Any]]:
        images = _split_images(image)
        prompts = None
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            checked: dict[str, str] = {}  # each distinct prompt is tokenized (checked) once
            for i, p in enumerate(prompts):
                if not (isinstance(p, str) and p in checked):
                    checked_p = check_prompt(p, self.tokenizer, name=f"prompt[{i}]")
                    if isinstance(p, str):
                        checked[p] = checked_p
                    prompts[i] = checked_p
                else:
                    prompts[i] = checked[p]
        n = max(len(images), len(prompts) if prompts else n_embeds or 1)
        if len(images) == 1 and n > 1:
            images = images * n
        if prompts is not None and len(prompts) == 1 and n > 1:
            prompts = prompts * n
        if len(images) != n or (prompts is not None and len(prompts) != n):
            raise InputError(
                f"batch: {len(images)} images and {len(prompts or [])} prompts; give equal "
                "numbers, or one of either"
            )
        return prompts, images

    def encode_prompt(
        self,
        prompt: PromptInput,
        device: torch.device | None = None,
        negative_prompt: PromptInput | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings ``(cond, uncond)``, each ``(B, 77, D)``; encode once, reuse often."""
        device = device or self._placement().device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = (
                [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            )
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
        embeds = self._text_embeddings(prompts + negatives, device)
        return embeds[: len(prompts)], embeds[len(prompts) :]

    def _text_embeddings(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """Embeddings of ``texts``; each distinct text runs through the encoder once."""
        from ..text import encode_prompts

        return encode_prompts(
            self.tokenizer, self.text_encoder, texts, device, self._placement().unet_dtype
        )

    # ------------------------------------------------------------------ the model
    def guided_prediction(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | float,
        image_latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        image_guidance_scale: float,
    ) -> torch.Tensor:
        """The UNet's output under InstructPix2Pix guidance, the branches in one batched call.

        ``latents`` is the (already scheduler-scaled) noisy latent; ``image_latents`` the
        encoded input image. With both scales 1 only the conditional branch runs.
        """
        branches = self._branch_inputs(
            image_latents, cond, uncond, guidance_scale, image_guidance_scale
        )
        return self._guided(latents, t, branches, guidance_scale, image_guidance_scale)

    def _branch_inputs(
        self,
        image_latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        image_guidance_scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step-independent UNet inputs (image channels, text context) of every branch.

        Built once per call, not once per step: the branches are ``(c_I, c_T)``,
        ``(c_I, 0)`` and ``(0, 0)`` (zeros for the image, ``uncond`` for the text).
        """
        if not needs_three_branches(guidance_scale, image_guidance_scale):
            return image_latents, cond
        image_part = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        return image_part, torch.cat([cond, uncond, uncond])

    def _guided(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | float,
        branches: tuple[torch.Tensor, torch.Tensor],
        guidance_scale: float,
        image_guidance_scale: float,
    ) -> torch.Tensor:
        """One (batched) UNet call on the branch inputs of :meth:`_branch_inputs`, guided."""
        image_part, ctx = branches
        if not needs_three_branches(guidance_scale, image_guidance_scale):
            x = torch.cat([latents, image_part], dim=1)
            return self.unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        x = torch.cat([torch.cat([latents, latents, latents]), image_part], dim=1)
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == latents.shape[0] > 1:
            t = t.repeat(3)  # per-item timesteps follow the items into every branch
        out = self.unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        full, image_only, none = out.chunk(3)
        return instruct_pix2pix_guidance(
            full, image_only, none, guidance_scale, image_guidance_scale
        )

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Image latents as InstructPix2Pix conditions on them: the posterior mode, unscaled."""
        where = self._placement()
        image = image.to(device=where.vae_device, dtype=where.vae_dtype)
        return self.vae.encode(image).latent_dist.mode().to(where.unet_dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents to images in [-1, 1] (by :meth:`set_latent_decoder`'s decoder if set)."""
        decoder = getattr(self, "_latent_decoder", None)
        if decoder is None:
            where = self._placement()
            decoder, device, dtype = self.vae, where.vae_device, where.vae_dtype
        else:
            first = next(decoder.parameters())
            device, dtype = first.device, first.dtype
        latents = latents.to(device=device, dtype=dtype) / decoder.config.scaling_factor
        return decoder.decode(latents, return_dict=False)[0].clamp(-1, 1)

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

    def one_step(
        self,
        noise: torch.Tensor,
        image_latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        image_guidance_scale: float,
        timestep: int | None = None,
    ) -> torch.Tensor:
        """IPNet's one step: the clean latent predicted from pure noise at the student timestep."""
        t = int(self.config.student_timestep if timestep is None else timestep)
        t_tensor = torch.full((noise.shape[0],), t, device=noise.device, dtype=torch.long)
        out = self.guided_prediction(
            noise, t_tensor, image_latents, cond, uncond, guidance_scale, image_guidance_scale
        )
        # abar_t read on the host (alphas_cumprod lives there) and filled on the device: no
        # device -> host copy of the timestep, so no synchronisation.
        ab = torch.full(
            (1,) * noise.ndim,
            float(self.scheduler.alphas_cumprod[t]),
            device=noise.device,
            dtype=noise.dtype,
        )
        return predict_x0(out, noise, ab, self.scheduler.config.prediction_type)

    def multi_step(
        self,
        noise: torch.Tensor,
        image_latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        image_guidance_scale: float,
        num_inference_steps: int,
        generator: GeneratorInput,
    ) -> torch.Tensor:
        """The scheduler's loop with InstructPix2Pix guidance (IDE-Net, InstructPix2Pix)."""
        self.scheduler.set_timesteps(num_inference_steps, device=noise.device)
        latents = noise * self.scheduler.init_noise_sigma
        extra = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            extra["generator"] = generator
        branches = self._branch_inputs(
            image_latents, cond, uncond, guidance_scale, image_guidance_scale
        )
        for t in self.progress_bar(self.scheduler.timesteps):
            scaled = self.scheduler.scale_model_input(latents, t)
            out = self._guided(scaled, t, branches, guidance_scale, image_guidance_scale)
            latents = self.scheduler.step(out, t, latents, **extra, return_dict=False)[0]
        return latents

    # ------------------------------------------------------------------ call
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
    ):
        """Edit ``image`` by ``prompt``.

        Args:
            prompt: the instruction, or a list (a batch).
            image: the portrait(s): path, bytes, PIL, numpy, tensor (``(3, H, W)`` in [0, 1])
                or a list; a ``(B, 3, H, W)`` tensor is a batch. One prompt with many images
                (or the reverse) is broadcast.
            num_inference_steps: 1 = one-step mode; default the checkpoint's recommended count.
            guidance_scale: text guidance s_T (default from the checkpoint: 7.5, IPNet 1).
            image_guidance_scale: image guidance s_I (default 1.5, IPNet 1).
            iterations: style boost passes; each output is the next input (§3.2.4).
            generator: a generator, or one per batch item (then a batch equals its items run
                one by one with the same generators).
            output_type: ``pil`` (default), ``np``, ``pt`` or ``latent``.
            negative_prompt: replaces the empty prompt of the unconditional branches.
            resolution: long side the input is resized to (multiple of 8 kept); ``None`` keeps
                the input's size rounded to a multiple of 8.
            timestep: the one-step mode's timestep (default ``student_timestep``).
            prompt_embeds / negative_prompt_embeds: precomputed text embeddings
                (:meth:`encode_prompt`), e.g. to encode a prompt once for a video.
        """
        steps = int(num_inference_steps or self.config.recommended_steps)
        self.check_inputs(prompt, image, steps, iterations, output_type, prompt_embeds)
        g_text = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        g_image = (
            self.config.default_image_guidance_scale
            if image_guidance_scale is None
            else image_guidance_scale
        )
        n_embeds = None if prompt_embeds is None else prompt_embeds.shape[0]
        prompts, sources = self._as_batch(prompt, image, n_embeds)
        policy = ResolutionPolicy(long_side=resolution)
        where = self._placement()
        device = where.device
        pixels = [
            image_to_tensor(policy.apply(load_image(s, name=f"image[{i}]")))
            for i, s in enumerate(sources)
        ]
        if len({tuple(p.shape) for p in pixels}) > 1:
            raise InputError(
                "image: a batch needs inputs of one size after resizing; edit them one by one"
            )
        x = torch.cat(pixels).to(device)
        batch = x.shape[0]
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise InputError(f"generator: {len(generator)} generators for a batch of {batch}")

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
        if cond.shape[0] == 1 and batch > 1:
            cond = cond.expand(batch, -1, -1)
        if uncond.shape[0] != batch:
            uncond = uncond[:1].expand(batch, -1, -1)

        latents = None
        for _ in range(iterations):
            image_latents = self.encode_image(x)
            shape = image_latents.shape
            noise = randn_tensor(
                shape, generator=generator, device=device, dtype=image_latents.dtype
            )
            if steps == 1:
                latents = self.one_step(
                    noise, image_latents, cond, uncond, g_text, g_image, timestep=timestep
                )
            else:
                latents = self.multi_step(
                    noise, image_latents, cond, uncond, g_text, g_image, steps, generator
                )
            if output_type == "latent" and _ == iterations - 1:
                break
            x = self.decode_latents(latents)

        self.maybe_free_model_hooks()
        images = latents if output_type == "latent" else tensor_to_images(x, output_type)
        if not return_dict:
            return (images,)
        return InstantPortraitPipelineOutput(images=images)
