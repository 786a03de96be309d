"""FastFacePipeline: IP-Adapter FaceID-Plus-v2 on few-step SDXL with DCG and AM.

FastFace (Karpukhin et al. 2025) is inference only. The pipeline is SDXL
(:class:`~diffusers.StableDiffusionXLPipeline`, whose prompt encoding, IP-Adapter loading and
VAE decoding it keeps) with its own 4-step loop:

* the adapter is loaded with diffusers' ``load_ip_adapter`` (its LoRA becomes the PEFT adapter
  ``faceid_0``, weighted by ``lora_scale``); the ArcFace embedding goes in as
  ``ip_adapter_image_embeds``, the CLIP-ViT-H penultimate states of the face crop as the
  Plus-v2 projection's ``clip_embeds`` with ``shortcut=True`` (spec §1);
* the guidance branches (null, ID only, text+ID for DCG_2) run in ONE batched UNet call per
  step; the null text is zeros (``force_zeros_for_empty_prompt``), the null ID a zero
  ArcFace vector and the CLIP states of a zero image (spec §2.2);
* :func:`~instantportrait.guidance.decoupled_guidance` combines them with the per-step
  alpha/beta and the rescale at every step; without DCG the family's baseline is used
  (no guidance, one branch; LCM: CFG 1.5, two branches);
* AM: every IP cross-attention runs
  :class:`~instantportrait.attention.FastFaceIPAdapterAttnProcessor`; the pipeline sets
  the preset and the step index on the shared state before each UNet call and clears both
  after the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import (
    StableDiffusionXLPipelineOutput,
)

from ..attention import AMState, install_am_processors
from ..guidance import (
    DCG_BRANCHES,
    classifier_free_guidance,
    decoupled_guidance,
    step_schedule,
)
from .fastface_presets import FAMILIES, FastFacePreset, fastface_preset
from .step_callbacks import StepCallback, StepCallbackMixin
from .vae_latents import decode_latents

__all__ = ["FastFacePipeline"]

#: condition of each branch name: (text, id)
_BRANCH = {
    "u": ("null", "null"),
    "t": ("c_text", "null"),
    "i": ("null", "c_id"),
    "ti": ("c_text", "c_id"),
}


def _branch_name(cond: tuple[str, str]) -> str:
    return next(k for k, v in _BRANCH.items() if v == cond)


class FastFacePipeline(StepCallbackMixin, StableDiffusionXLPipeline):
    """SDXL + IP-Adapter FaceID-Plus-v2 with FastFace's decoupled guidance and AM.

    Components are SDXL's (``image_encoder``: the CLIP vision model of the Plus-v2
    projection). Build it with :func:`~instantportrait.pipelines.fastface_loading.load_fastface`
    (family weights, scheduler, adapter), or ``from_pretrained`` an SDXL folder then
    :meth:`load_faceid_adapter`.
    """

    family: str | None = None
    #: The one tensor a step callback sees (FastFace's branches are not diffusers' two).
    _callback_tensor_inputs = ["latents"]

    @property
    def am_state(self) -> AMState:
        """The state shared with the AM processors (created on first use)."""
        if not hasattr(self, "_am_state"):
            self._am_state = AMState()
        return self._am_state

    def load_faceid_adapter(
        self, state_dict: dict[str, dict[str, torch.Tensor]], *, shortcut: bool = True
    ) -> int:
        """Load a FaceID(-Plus) adapter state dict through ``load_ip_adapter``; install AM.

        Returns the number of IP cross-attention layers now under the AM state. An adapter
        with LoRA weights needs PEFT (diffusers would skip them with a warning).
        """
        from diffusers.utils import USE_PEFT_BACKEND

        if not USE_PEFT_BACKEND and any("_lora." in k for k in state_dict["ip_adapter"]):
            from ..errors import MissingDependencyError

            raise MissingDependencyError(
                "the FaceID adapter's LoRA needs PEFT: pip install 'peft>=0.13'"
            )
        self.load_ip_adapter(
            state_dict, subfolder=None, weight_name=None, image_encoder_folder=None
        )
        proj = self.unet.encoder_hid_proj.image_projection_layers[0]
        proj.shortcut = shortcut
        proj.shortcut_scale = 1.0
        return install_am_processors(self.unet, self.am_state)

    @torch.no_grad()
    def encode_face_crop(
        self, crop: torch.Tensor, bgr: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP penultimate hidden states of the face crop and of a zero image (the null ID).

        ``crop``: ``(1, 3, S, S)`` RGB in ``[0, 1]``. ``bgr`` swaps the channels first, as the
        official code and IP-Adapter's FaceID demo do (spec §1). Returns two ``(1, T, C)``.
        """
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError(
                "FastFacePipeline: no image_encoder/feature_extractor (Plus-v2 needs CLIP)"
            )
        x = crop.flip(1) if bgr else crop
        arrays = [
            (a.permute(1, 2, 0).cpu().float().numpy() * 255).round().astype(np.uint8) for a in x
        ]
        pixels = self.feature_extractor(images=arrays, return_tensors="pt").pixel_values
        enc = self.image_encoder
        pixels = pixels.to(device=enc.device, dtype=enc.dtype)
        cond = enc(pixels, output_hidden_states=True).hidden_states[-2]
        null = enc(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return cond, null

    def check_inputs_fastface(
        self, prompts: list[str], arcface: torch.Tensor, steps: int, height: int, width: int
    ) -> None:
        """Clear errors for the arguments FastFace adds to SDXL's."""
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise ValueError("prompt: a string or a list of strings")
        if arcface.ndim != 2 or arcface.shape[0] != 1:
            raise ValueError(
                "ip_adapter_image_embeds: expected a (1, D) ArcFace embedding, "
                f"got {tuple(arcface.shape)}"
            )
        if steps < 1:
            raise ValueError("num_inference_steps: must be at least 1")
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(
                f"height/width: multiples of {self.vae_scale_factor}, got {height}x{width}"
            )

    def _guidance_plan(self, preset: FastFacePreset) -> tuple[list[str], float]:
        """The branches to run and the baseline CFG scale (when not DCG)."""
        if preset.guidance is not None:
            first, second = DCG_BRANCHES[preset.guidance.variant]
            return ["u", _branch_name(first), _branch_name(second)], 1.0
        spec = FAMILIES.get(self.family or "", None)
        scale = spec.baseline_guidance if spec is not None else 1.0
        return (["ti"] if scale == 1.0 else ["u", "ti"]), scale

    def denoise_step(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        step: int,
        num_branches: int,
        encoder_states: torch.Tensor,
        added: dict[str, Any],
        *,
        guidance: tuple[Any, float, float] | None,
        baseline: float = 1.0,
        extra: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """One denoising step: the branches in one UNet call, the guidance, the scheduler.

        ``guidance``: ``(DCGConfig, alpha_k, beta_k)`` or ``None`` (one branch: no guidance;
        two: CFG with ``baseline``). The AM state gets the step index first.
        """
        self.am_state.at_step(step)
        model_in = self.scheduler.scale_model_input(torch.cat([latents] * num_branches), t)
        noise = self.unet(
            model_in,
            t,
            encoder_hidden_states=encoder_states,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        parts = noise.chunk(num_branches)
        if guidance is not None:
            dcg, alpha, beta = guidance
            pred = decoupled_guidance(*parts, alpha, beta, variant=dcg.variant, rescale=dcg.rescale)
        elif num_branches == 2:
            pred = classifier_free_guidance(parts[1], parts[0], baseline)
        else:
            pred = parts[0]
        return self.scheduler.step(pred, t, latents, **(extra or {}), return_dict=False)[0]

    @torch.no_grad()
    def __call__(  # noqa: C901 - one denoising loop, kept in one place as diffusers does
        self,
        prompt: str | Sequence[str],
        ip_adapter_image_embeds: torch.Tensor | list[torch.Tensor],
        face_crop: torch.Tensor | None = None,
        *,
        clip_embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
        preset: str | FastFacePreset | dict[str, Any] = "baseline",
        num_inference_steps: int = 4,
        height: int | None = None,
        width: int | None = None,
        ip_adapter_scale: float = 0.8,
        lora_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        return_dict: bool = True,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Generate portraits of the identity given by its embeddings.

        Args:
            prompt: one prompt or a list.
            ip_adapter_image_embeds: the ArcFace embedding ``(1, 512)`` (L2-normalised), or
                diffusers' list form ``[(1, 1, 512)]``.
            face_crop: ``(1, 3, 224, 224)`` aligned face crop in ``[0, 1]`` for CLIP
                (or pass ``clip_embeds`` = (cond, null) from :meth:`encode_face_crop`).
            preset: a :class:`FastFacePreset`, its data, or a published name (``baseline``,
                ``am1``, ``am2``, ``am2_noadain``, ``dcg``, ``fastface-am1``, ``fastface-am2``...).
            num_inference_steps: 4 for every family (schedules stretch to other counts).
            height, width: default: the family's resolution (1024, Turbo 512).
            ip_adapter_scale: lambda of eq. 3 (FastFace's tables: 0.8).
            lora_scale: the strength of the adapter's LoRA ``faceid_0`` (1.0 or 0.5 in the tables).
            num_images_per_prompt, generator, latents, output_type, return_dict: as diffusers.
            callback_on_step_end: diffusers' ``f(pipe, step_index, timestep, callback_kwargs)``
                after each step, ``callback_kwargs`` holding ``latents`` (the only tensor
                offered: the branches of FastFace's guidance are not diffusers' two; a
                returned ``latents`` replaces the pipeline's). ``pipe.num_timesteps`` and
                ``pipe.guidance_scale`` (the baseline CFG scale; DCG's scales are per step)
                are readable.
        """
        preset = fastface_preset(preset)
        names = self.callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        arcface = ip_adapter_image_embeds
        if isinstance(arcface, list):
            arcface = arcface[0].reshape(arcface[0].shape[0], -1)
        default = (
            FAMILIES[self.family].resolution
            if self.family in FAMILIES
            else self.default_sample_size * self.vae_scale_factor
        )
        height, width = height or default, width or default
        self.check_inputs_fastface(prompts, arcface, num_inference_steps, height, width)
        device, dtype = self._execution_device, self.unet.dtype
        n = len(prompts) * num_images_per_prompt

        if clip_embeds is None:
            if face_crop is None:
                raise ValueError("face_crop or clip_embeds: one is required (Plus-v2 needs CLIP)")
            clip_embeds = self.encode_face_crop(face_crop)
        clip_cond, clip_null = (c.to(device=device, dtype=dtype) for c in clip_embeds)

        text, _, pooled, _ = self.encode_prompt(
            prompts,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=False,
        )
        proj_dim = (
            self.text_encoder_2.config.projection_dim
            if self.text_encoder_2 is not None
            else int(pooled.shape[-1])
        )
        time_ids = self._get_add_time_ids(
            (height, width),
            (0, 0),
            (height, width),
            dtype=text.dtype,
            text_encoder_projection_dim=proj_dim,
        ).to(device)

        conditions = {
            "text": (text, torch.zeros_like(text)),
            "pooled": (pooled, torch.zeros_like(pooled)),
            "arcface": (
                arcface.to(device, dtype).expand(n, -1),
                torch.zeros(n, arcface.shape[-1], device=device, dtype=dtype),
            ),
            "clip": (clip_cond.expand(n, -1, -1), clip_null.expand(n, -1, -1)),
        }
        branches, baseline = self._guidance_plan(preset)
        self._guidance_scale = float(baseline)

        def batch(kind: str, axis: int) -> torch.Tensor:
            parts = []
            for b in branches:
                cond = _BRANCH[b][axis]
                parts.append(conditions[kind][0 if cond != "null" else 1])
            return torch.cat(parts)

        encoder_states = batch("text", 0)
        added = {
            "text_embeds": batch("pooled", 0),
            "time_ids": time_ids.repeat(n * len(branches), 1),
            "image_embeds": [batch("arcface", 1)[:, None]],
        }
        projection = self.unet.encoder_hid_proj.image_projection_layers[0]
        projection.clip_embeds = batch("clip", 1)[:, None]

        self.set_ip_adapter_scale(ip_adapter_scale)
        if "faceid_0" in getattr(self.unet, "peft_config", {}):
            self.set_adapters(["faceid_0"], adapter_weights=[lora_scale])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(
            n, self.unet.config.in_channels, height, width, text.dtype, device, generator, latents
        )
        extra = self.prepare_extra_step_kwargs(generator, 0.0)

        dcg = preset.guidance
        if dcg is not None:
            alphas = step_schedule(dcg.alpha, len(timesteps))
            betas = step_schedule(dcg.beta, len(timesteps))
        with self.am_state.active(preset.am), self.progress_bar(total=len(timesteps)) as bar:
            for k, t in enumerate(timesteps):
                latents = self.denoise_step(
                    latents,
                    t,
                    k,
                    len(branches),
                    encoder_states,
                    added,
                    guidance=(dcg, alphas[k], betas[k]) if dcg is not None else None,
                    baseline=baseline,
                    extra=extra,
                )
                if names:
                    latents = self.run_step_callback(
                        callback_on_step_end, names, k, t, {"latents": latents}
                    )["latents"]
                bar.update()
        projection.clip_embeds = None

        if output_type == "latent":
            images: Any = latents
        else:
            upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
            if upcast:
                self.upcast_vae()
            decoded = decode_latents(self.vae, latents)  # any autoencoder (TAESD-XL too)
            if upcast:
                self.vae.to(dtype=torch.float16)
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return StableDiffusionXLPipelineOutput(images=images)
