"""InstructPix2Pix guidance for the edit pipeline (a mixin of
:class:`~instantportrait.pipelines.InstantPortraitPipeline`): the text + image
classifier-free guidance of the many-step mode, its three branches ``(0, 0)``, ``(c_I, 0)``,
``(c_I, c_T)`` batched in one UNet call (the conditional rows last, as diffusers' Stable
Diffusion pipelines order them), and only the conditional branch when both scales are 1."""

from __future__ import annotations

import torch

from ..backbones.ip2p_unet import InstructPix2PixBackbone
from ..guidance import instruct_pix2pix_guidance, needs_three_branches


class EditGuidanceMixin:
    """The guided UNet prediction, each call through ``self.backbone``
    (:class:`~instantportrait.backbones.ip2p_unet.InstructPix2PixBackbone`: 8 input channels,
    the image latents on the channels)."""

    @property
    def backbone(self) -> InstructPix2PixBackbone:
        """This pipeline's UNet behind the edit-backbone interface (made once)."""
        made = self.__dict__.get("_backbone")
        if made is None:
            made = self.__dict__["_backbone"] = InstructPix2PixBackbone(self)
        return made

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

        Built once per call, not once per step: the branches are ``(0, 0)``, ``(c_I, 0)``
        and ``(c_I, c_T)`` (zeros for the image, ``uncond`` for the text).
        """
        if not needs_three_branches(guidance_scale, image_guidance_scale):
            return image_latents, cond
        return self._three_branches(image_latents, cond, uncond)

    @staticmethod
    def _three_branches(
        image_latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image channels and text context of ``(0, 0)``, ``(c_I, 0)``, ``(c_I, c_T)``."""
        image_part = torch.cat([torch.zeros_like(image_latents), image_latents, image_latents])
        return image_part, torch.cat([uncond, uncond, cond])

    def _guided(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | float,
        branches: tuple[torch.Tensor, torch.Tensor],
        guidance_scale: float,
        image_guidance_scale: float,
    ) -> torch.Tensor:
        """One (batched) UNet call on the branch inputs of :meth:`_branch_inputs`, guided when
        they hold the three branches."""
        image_part, ctx = branches
        predict = self.backbone.predict  # the image goes on the UNet's channels there
        if image_part.shape[0] == latents.shape[0]:
            return predict(latents, t, ctx, image_part)
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == latents.shape[0] > 1:
            t = t.repeat(3)  # per-item timesteps follow the items into every branch
        out = predict(torch.cat([latents, latents, latents]), t, ctx, image_part)
        none, image_only, full = out.chunk(3)
        return instruct_pix2pix_guidance(
            full, image_only, none, guidance_scale, image_guidance_scale
        )
