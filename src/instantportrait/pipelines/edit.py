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

import contextlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import FromSingleFileMixin, StableDiffusionLoraLoaderMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..errors import InputError, ModelNotFoundError
from ..guidance import instruct_pix2pix_guidance, needs_three_branches
from ..io import (
    MAX_RESOLUTION,
    ImageSource,
    ResolutionPolicy,
    atomic_directory,
    check_prompt,
    load_image,
)
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
    """Decoded ``[-1, 1]`` images to the requested output type.

    PIL images are quantised on the tensor's device (``round(255 * (x/2 + 1/2))``, clamped)
    and copied to the host as bytes: four times less to copy, and a few small operations
    instead of numpy's float round trip.
    """
    if output_type == "pil":
        x = images.float().add(1.0).mul_(127.5).clamp_(0, 255).round_().to(torch.uint8)
        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    return x.permute(0, 2, 3, 1).cpu().numpy()


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


#: Components an InstructPix2Pix checkpoint may list that this pipeline does not load.
NOT_LOADED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")

SAFETY_CHECKER_POLICY = (
    "InstantPortrait does not run the Stable Diffusion safety checker: {name} lists one, and "
    "it is neither loaded nor run (see docs/editing.md, 'Safety checker'); screen outputs "
    "yourself where your use needs it"
)


def _listed_components(path: Path) -> list[str]:
    """Component names a local ``model_index.json`` lists with a class (not ``[null, null]``)."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [
        k
        for k, v in index.items()
        if isinstance(v, list) and len(v) == 2 and v[0] is not None and v[1] is not None
    ]


class _DropLines(logging.Filter):
    """Drops log records for which ``drop(message)`` is true."""

    def __init__(self, drop: Callable[[str], bool]):
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record.getMessage())


@contextlib.contextmanager
def _dropping(logger_names: Sequence[str], drop: Callable[[str], bool]) -> Iterator[None]:
    """Silence the matching lines of some diffusers loggers for the block."""
    loggers = [logging.getLogger(n) for n in logger_names]
    filt = _DropLines(drop)
    for logger in loggers:
        logger.addFilter(filt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(filt)


def _quiet_about(names: Sequence[str]):
    """Diffusers' "... are not expected ... will be ignored" lines about ``names`` (the policy
    for them is stated once by :meth:`InstantPortraitPipeline.from_pretrained`)."""
    return _dropping(
        ["diffusers.configuration_utils", "diffusers.pipelines.pipeline_utils"],
        lambda text: "not expected" in text and any(n in text for n in names),
    )


def _empty_fp32_notice(text: str) -> bool:
    # diffusers warns on every cast that "modules ... should be kept in float32: []" even
    # when the list is empty; only the empty-list form is dropped.
    return "should be kept in float32: []" in text


class InstantPortraitPipeline(
    DiffusionPipeline, StableDiffusionLoraLoaderMixin, FromSingleFileMixin
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
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

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

    def to(self, *args: Any, **kwargs: Any):
        """``DiffusionPipeline.to`` without diffusers' empty "kept in float32: []" notice."""
        with _dropping(["diffusers.models.modeling_utils"], _empty_fp32_notice):
            return super().to(*args, **kwargs)

    # ------------------------------------------------------------------ speed
    def enable_speed(
        self,
        speed: str | Sequence[str] | None = "safe",
        *,
        tiny_vae: str | os.PathLike | None = None,
    ):
        """Turn on a speed preset or features (:mod:`instantportrait.speed`); returns the
        :class:`~instantportrait.speed.SpeedState` (``.describe()``). Call after ``.to()``;
        a second call first undoes the first."""
        from ..speed import enable_speed

        self.disable_speed()
        self._speed_state = enable_speed(self, speed, tiny_vae=tiny_vae)
        return self._speed_state

    def disable_speed(self) -> None:
        """Undo :meth:`enable_speed` (back to the plain pipeline)."""
        state = self.__dict__.pop("_speed_state", None)
        if state is not None:
            state.undo()

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
        pinned = self.__dict__.get("_pinned_placement")
        if pinned is not None:
            return pinned
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

        Any InstructPix2Pix-format checkpoint loads (e.g. ``timbrooks/instruct-pix2pix``).
        Components it has beyond ours (:data:`NOT_LOADED_COMPONENTS`) are not loaded; a
        listed safety checker is reported once as a warning (:data:`SAFETY_CHECKER_POLICY`).
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
            listed = _listed_components(path)
            if "safety_checker" in listed:
                warnings.warn(SAFETY_CHECKER_POLICY.format(name=name), stacklevel=2)
            for component in NOT_LOADED_COMPONENTS:
                if component in listed:
                    kwargs.setdefault(component, None)
        elif path.exists():
            raise ModelNotFoundError(f"{name}: not a folder; {how}")
        elif not _looks_like_hub_id(name):
            raise ModelNotFoundError(f"{name}: no such folder; {how}")
        try:
            with _quiet_about(NOT_LOADED_COMPONENTS):
                return super().from_pretrained(name, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(
                f"{name}: could not load the pipeline{offline}: {first[:200]}; {how}"
            ) from exc

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | os.PathLike, **kwargs: Any):
        """Load one ``.safetensors`` checkpoint in the original (LDM) layout.

        Offline (this toolkit's rule: nothing is downloaded behind your back) the pipeline's
        configs must come from ``config=``: a local diffusers folder of the same architecture
        (e.g. a saved InstructPix2Pix pipeline, or ``instantportrait init-tiny`` for the tiny
        one); its tokenizer and scheduler are used as they are, and the UNet, VAE and text
        encoder weights are read from the checkpoint. On a machine that reaches the Hub,
        ``config="timbrooks/instruct-pix2pix"`` works too.
        """
        path = Path(str(pretrained_model_link_or_path)).expanduser()
        config = kwargs.get("config")
        how = (
            "pass config=FOLDER, a local diffusers pipeline folder of the same architecture "
            "(CLI: --config FOLDER)"
        )
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: no such checkpoint file")
        if config is None:
            raise ModelNotFoundError(f"{path}: a single-file checkpoint needs its configs; {how}")
        if not Path(str(config)).expanduser().is_dir() and (
            os.environ.get("HF_HUB_OFFLINE") or not _looks_like_hub_id(str(config))
        ):
            raise ModelNotFoundError(f"{config}: config folder not found; {how}")
        try:
            return super().from_single_file(str(path), **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(
                f"{path}: could not load the single-file checkpoint: {first[:200]}"
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
            # Each distinct prompt is checked (tokenized for its length) once per pipeline:
            # a video or a batch job repeats it at every call.
            checked = self._host_cache("checked_prompts")
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
        unique = list(dict.fromkeys(texts))
        ids = self._token_ids(unique).to(device)
        embeds = self.text_encoder(ids)[0].to(dtype=self._placement().unet_dtype)
        if len(unique) == len(texts):
            return embeds
        if len(unique) == 1:
            return embeds.expand(len(texts), -1, -1)
        where = {text: i for i, text in enumerate(unique)}
        # slices, not an index tensor: no host-to-device copy
        return torch.cat([embeds[where[t] : where[t] + 1] for t in texts])

    def _host_cache(self, name: str) -> dict[str, Any]:
        """A small per-pipeline cache of host work (prompt checks, token ids), emptied when
        the tokenizer changes or it grows past 512 entries."""
        caches = self.__dict__.setdefault("_host_caches", {})
        if caches.get("_tokenizer") is not self.tokenizer:
            caches.clear()
            caches["_tokenizer"] = self.tokenizer
        cache = caches.setdefault(name, {})
        if len(cache) > 512:
            cache.clear()
        return cache

    def _token_ids(self, texts: list[str]) -> torch.Tensor:
        """``(len(texts), model_max_length)`` token ids, padded and truncated; each text is
        tokenized once per pipeline (tokenizing costs ~0.4 ms of host time a call)."""
        cache = self._host_cache("token_ids")
        missing = [t for t in texts if t not in cache]
        if missing:
            ids = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for text, row in zip(missing, ids):
                cache[text] = row[None]
        if len(texts) == 1:
            return cache[texts[0]]
        return torch.cat([cache[t] for t in texts])

    def maybe_free_model_hooks(self) -> None:
        """diffusers' end-of-call hook work, without building ``self.components`` (an
        ``inspect.signature`` walk, ~0.1 ms) when no offloading hook is installed."""
        modules = (self.unet, self.vae, self.text_encoder, getattr(self, "_latent_decoder", None))
        for module in modules:
            if hasattr(module, "_reset_stateful_cache"):
                module._reset_stateful_cache()
        if getattr(self, "_all_hooks", None):
            super().maybe_free_model_hooks()

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
        vae = self.vae
        if getattr(vae, "use_slicing", True) or getattr(vae, "use_tiling", True):
            return vae.encode(image).latent_dist.mode().to(where.unet_dtype)
        # The posterior's mode is the mean: the first half of the moments. Reading it directly
        # skips building the distribution (its std and var: four tensor operations of host
        # time per call). Slicing and tiling go through ``vae.encode`` above.
        moments = vae.encoder(image)
        if getattr(vae, "quant_conv", None) is not None:
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
        latents = latents.to(device=device, dtype=dtype) / decoder.config.scaling_factor
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
        t = int(self.student_timestep if timestep is None else timestep)
        t_tensor, ab = self._one_step_constants(t, noise)
        out = self.guided_prediction(
            noise, t_tensor, image_latents, cond, uncond, guidance_scale, image_guidance_scale
        )
        return predict_x0(out, noise, ab, self.scheduler.config.prediction_type)

    def _one_step_constants(self, t: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The timestep tensor and abar_t of the one-step mode, made once per (t, batch,
        device, dtype, scheduler). abar_t is read on the host (alphas_cumprod lives there) and
        filled on the device: no device -> host copy, so no synchronisation."""
        cache = self.__dict__.setdefault("_one_step_cache", {})
        key = (t, noise.shape[0], noise.ndim, noise.device, noise.dtype, id(self.scheduler))
        if key not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[key] = (
                torch.full((noise.shape[0],), t, device=noise.device, dtype=torch.long),
                torch.full(
                    (1,) * noise.ndim,
                    float(self.scheduler.alphas_cumprod[t]),
                    device=noise.device,
                    dtype=noise.dtype,
                ),
            )
        return cache[key]

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
        callback: Callable[[int, Any, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The scheduler's loop with InstructPix2Pix guidance (IDE-Net, InstructPix2Pix).

        ``callback(step_index, t, latents) -> latents`` runs after each scheduler step.
        """
        self.scheduler.set_timesteps(num_inference_steps, device=noise.device)
        latents = noise * self.scheduler.init_noise_sigma
        extra = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            extra["generator"] = generator
        branches = self._branch_inputs(
            image_latents, cond, uncond, guidance_scale, image_guidance_scale
        )
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            scaled = self.scheduler.scale_model_input(latents, t)
            out = self._guided(scaled, t, branches, guidance_scale, image_guidance_scale)
            latents = self.scheduler.step(out, t, latents, **extra, return_dict=False)[0]
            if callback is not None:
                latents = callback(i, t, latents)
        return latents

    # ------------------------------------------------------------------ call
    def _target_size(
        self, policy: ResolutionPolicy, size: tuple[int, int], height: int | None, width: int | None
    ) -> tuple[int, int]:
        """(width, height) the model sees: ``height``/``width`` if given (one given: the other
        follows the aspect ratio), else the resolution policy's."""
        if height is None and width is None:
            return policy.target_size(*size)
        w0, h0 = size
        if width is None:
            width = max(8, int(round(w0 * height / h0 / 8)) * 8)
        if height is None:
            height = max(8, int(round(h0 * width / w0 / 8)) * 8)
        return width, height

    @staticmethod
    def _check_size_arguments(height: int | None, width: int | None, resolution: int | None):
        for name, value in (("height", height), ("width", width)):
            if value is None:
                continue
            if not isinstance(value, int) or value < 8 or value % 8:
                raise InputError(f"{name}: a multiple of 8, at least 8; got {value}")
            if value > MAX_RESOLUTION:
                raise InputError(
                    f"{name}: {value} is above the limit of {MAX_RESOLUTION} "
                    "(INSTANTPORTRAIT_MAX_RESOLUTION raises it)"
                )
        ResolutionPolicy(long_side=resolution)  # validates resolution

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
        callback: Callable[[int, Any, torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        """Edit one batch of same-size pixels ``x`` in [-1, 1]: latents or decoded images."""
        device = x.device
        latents = x
        for n in range(iterations):
            image_latents = self.encode_image(x)
            noise = randn_tensor(
                image_latents.shape, generator=generator, device=device, dtype=image_latents.dtype
            )
            offset = n * steps
            step_callback = None
            if callback is not None:

                def step_callback(i, t, lat, offset=offset):
                    return callback(offset + i, t, lat)

            if steps == 1:
                latents = self.one_step(
                    noise, image_latents, cond, uncond, g_text, g_image, timestep=timestep
                )
                if step_callback is not None:
                    t = self.student_timestep if timestep is None else int(timestep)
                    latents = step_callback(0, t, latents)
            else:
                latents = self.multi_step(
                    noise,
                    image_latents,
                    cond,
                    uncond,
                    g_text,
                    g_image,
                    steps,
                    generator,
                    step_callback,
                )
            if output_type == "latent" and n == iterations - 1:
                return latents
            # The last pass's images are clamped by the conversion to the output type.
            x = self.decode_latents(latents, clamp=n < iterations - 1)
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
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
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
                after each denoising step (style-boost passes continue the step count);
                ``callback_kwargs`` holds the tensors named in
                ``callback_on_step_end_tensor_inputs`` (``latents``); a returned ``latents``
                replaces the current one.
        """
        steps = int(num_inference_steps or self.recommended_steps)
        self.check_inputs(prompt, image, steps, iterations, output_type, prompt_embeds)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InputError(
                f"num_images_per_prompt: a positive integer, got {num_images_per_prompt}"
            )
        self._check_size_arguments(height, width, resolution)
        unknown = [k for k in callback_on_step_end_tensor_inputs if k != "latents"]
        if unknown:
            raise InputError(
                f"callback_on_step_end_tensor_inputs: only 'latents' is offered, got {unknown}"
            )
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

            callback = None
            if callback_on_step_end is not None:

                def callback(i: int, t: Any, latents: torch.Tensor) -> torch.Tensor:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    return out.get("latents", latents)

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
                out = self._edit(
                    x, c, u, g, steps, iterations, g_text, g_image, timestep, output_type, callback
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
