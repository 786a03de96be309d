"""The edit pipeline's two samplers (a mixin of
:class:`~instantportrait.pipelines.InstantPortraitPipeline`): IPNet's one step and the
scheduler's loop of IDE-Net / InstructPix2Pix, with diffusers' step callbacks.

A step callback sees ``latents``, ``prompt_embeds`` and ``image_latents``; while guided the
last two hold the three branches stacked as ``(0, 0)``, ``(c_I, 0)``, ``(c_I, c_T)`` (the
conditional rows last, as in diffusers' Stable Diffusion pipelines, so that
``diffusers.callbacks.SDCFGCutoffCallback``, which keeps ``prompt_embeds[-1:]``, keeps the
instruction). A callback that returns fewer ``prompt_embeds`` rows than the guided batch
turns guidance off: from then on the conditional branch runs alone. ``guidance_scale`` and
``image_guidance_scale`` are read at every step, so a callback may change them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..guidance import needs_three_branches
from ..parameterization import predict_x0
from .step_callbacks import StepCallbackMixin, rows_for

#: ``fn(step_index, timestep, tensors) -> tensors`` with the keys of
#: ``InstantPortraitPipeline._callback_tensor_inputs``.
TensorsCallback = Callable[[int, Any, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class EditSamplingMixin(StepCallbackMixin):
    """One-step and many-step sampling; expects the guidance mixin and a scheduler."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "image_latents"]

    @property
    def image_guidance_scale(self) -> float:
        """The image guidance scale of the current (or last) call; callbacks may change it."""
        return float(self.__dict__.get("_image_guidance_scale", 1.0))

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the guided branches run (now, or at the end of the last call): both scales
        1, or a callback that cut ``prompt_embeds`` to the conditional rows, leave one."""
        return bool(self.__dict__.get("_do_cfg", False))

    def _set_guidance(self, guidance_scale: float, image_guidance_scale: float) -> None:
        self._guidance_scale = float(guidance_scale)
        self._image_guidance_scale = float(image_guidance_scale)
        self._do_cfg = needs_three_branches(guidance_scale, image_guidance_scale)

    # ------------------------------------------------------------------ one step
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

    # ------------------------------------------------------------------ many steps
    def multi_step(
        self,
        noise: torch.Tensor,
        image_latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        image_guidance_scale: float,
        num_inference_steps: int,
        generator: Any,
        callback: TensorsCallback | None = None,
    ) -> torch.Tensor:
        """The scheduler's loop with InstructPix2Pix guidance (IDE-Net, InstructPix2Pix).

        ``callback(step_index, t, tensors) -> tensors`` runs after each scheduler step
        (``tensors``: ``latents``, ``prompt_embeds``, ``image_latents``; see the module doc).
        """
        self._set_guidance(guidance_scale, image_guidance_scale)
        branches = self._branch_inputs(
            image_latents, cond, uncond, guidance_scale, image_guidance_scale
        )
        return self._denoise(noise, branches, num_inference_steps, generator, callback)[0]

    def _denoise(
        self,
        noise: torch.Tensor,
        branches: tuple[torch.Tensor, torch.Tensor],
        num_inference_steps: int,
        generator: Any,
        callback: TensorsCallback | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The loop on prepared branch inputs; the final latents and branch inputs (a callback
        may have changed them)."""
        self.scheduler.set_timesteps(num_inference_steps, device=noise.device)
        latents = noise * self.scheduler.init_noise_sigma
        extra = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            extra["generator"] = generator
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            scaled = self.scheduler.scale_model_input(latents, t)
            out = self._guided(scaled, t, branches, self.guidance_scale, self.image_guidance_scale)
            latents = self.scheduler.step(out, t, latents, **extra, return_dict=False)[0]
            if callback is not None:
                latents, branches = self._after_callback(callback, i, t, latents, branches)
        return latents, branches

    def _after_callback(
        self,
        callback: TensorsCallback,
        i: int,
        t: Any,
        latents: torch.Tensor,
        branches: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run ``callback`` on this step's tensors; what it returns replaces them. Fewer
        ``prompt_embeds`` rows than the branches' turn guidance off (the conditional rows)."""
        image_part, ctx = branches
        out = callback(
            i, t, {"latents": latents, "prompt_embeds": ctx, "image_latents": image_part}
        )
        latents = out["latents"]
        image_part, ctx = out["image_latents"], out["prompt_embeds"]
        if ctx.shape[0] != image_part.shape[0]:
            n = latents.shape[0]
            image_part, ctx = rows_for(image_part, n), rows_for(ctx, n)
        self._do_cfg = image_part.shape[0] != latents.shape[0]
        return latents, (image_part, ctx)
