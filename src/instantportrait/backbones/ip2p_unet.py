"""The InstructPix2Pix UNet as an edit backbone: the image on the channels, epsilon out.

The edit image's (raw, unscaled) latents are concatenated to the noisy latent on the channel
axis (4 + 4 = 8 input channels); text is CLIP's token embeddings; guidance is InstructPix2Pix's
three-branch text + image classifier-free guidance. The UNet's output is the scheduler's
``prediction_type`` (epsilon for every released InstructPix2Pix checkpoint).

The backbone reads its components through the pipeline that owns it
(:class:`~instantportrait.pipelines.InstantPortraitPipeline`), so a UNet swapped in later (a
compiled one, a speed feature's) or the pipeline's device placement is honoured, and the
encoders are the pipeline's own (diffusers' InstructPix2Pix conventions, tested against its
pipeline).
"""

from __future__ import annotations

from typing import Any

import torch

from ..guidance import instruct_pix2pix_guidance
from ..parameterization import alpha_bar, predict_epsilon, predict_x0

__all__ = ["InstructPix2PixBackbone", "unet_on_channels"]


def unet_on_channels(
    unet: Any,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    cond: torch.Tensor,
    image_latents: torch.Tensor,
) -> torch.Tensor:
    """One InstructPix2Pix UNet call: the edit image's raw latents concatenated to the noisy
    latent on the channels (4 + 4), CLIP's tokens as cross-attention (Brooks et al. 2023,
    §3.2). The one place that knows the image goes on the channels: the pipeline's backbone
    and the trainers (whose ``unet`` may be accelerate's wrapper) call it."""
    x = torch.cat([x_t, image_latents], dim=1)
    return unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]


class InstructPix2PixBackbone:
    """The edit-backbone interface (see :mod:`instantportrait.backbones`) over an
    InstructPix2Pix-format pipeline: ``encode_prompt``, ``encode_image``, ``predict``,
    ``decode``, ``parameterisation``, ``x0``/``eps`` and ``trainable_modules``.

    Timesteps are the scheduler's integers (0..999); latents handed between the methods are
    the UNet's (noisy latents scaled by the VAE's factor, image latents raw).
    """

    image_on = "channels"

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    @property
    def unet(self) -> Any:
        """The pipeline's current UNet."""
        return self._pipe.unet

    @property
    def parameterisation(self) -> str:
        """The scheduler's ``prediction_type`` (``epsilon``, ``v_prediction`` or ``sample``)."""
        return self._pipe.scheduler.config.prediction_type

    def encode_prompt(
        self, prompts: list[str], negative: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP token embeddings ``(cond, uncond)`` (the unconditional: empty or ``negative``)."""
        return self._pipe.encode_prompt(prompts, negative_prompt=negative)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> the raw image latents the UNet is conditioned on."""
        return self._pipe.encode_image(pixels)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean (scaled) latents -> images in [-1, 1]."""
        return self._pipe.decode_latents(latents)

    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        cond: torch.Tensor,
        image_latents: torch.Tensor,
        guidance: tuple[float, float, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The UNet's output for the noisy latent ``x_t`` at timestep ``t``, the edit image on
        the channels. ``guidance=None``: one call on the rows as given (a caller may have
        batched the three branches into them already). ``guidance=(s_T, s_I, uncond)``: the
        three branches ``(0, 0)``, ``(c_I, 0)``, ``(c_I, c_T)`` in one call, combined by
        InstructPix2Pix's guidance (Brooks et al. 2023, eq. 3)."""
        if guidance is None:
            return unet_on_channels(self.unet, x_t, t, cond, image_latents)
        text_scale, image_scale, uncond = guidance
        image_part = torch.cat([torch.zeros_like(image_latents), image_latents, image_latents])
        ctx = torch.cat([uncond, uncond, cond])
        if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == x_t.shape[0] > 1:
            t = t.repeat(3)
        out = self.predict(torch.cat([x_t, x_t, x_t]), t, ctx, image_part)
        none, image_only, full = out.chunk(3)
        return instruct_pix2pix_guidance(full, image_only, none, text_scale, image_scale)

    def _ab(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        return alpha_bar(self._pipe.scheduler.alphas_cumprod, t, like)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor | int, out: torch.Tensor) -> torch.Tensor:
        """The clean latent from the output (DDPM eq. 15 for epsilon)."""
        return predict_x0(out, x_t, self._ab(t, x_t), self.parameterisation)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, out: torch.Tensor) -> torch.Tensor:
        """The noise from the output."""
        return predict_epsilon(out, x_t, self._ab(t, x_t), self.parameterisation)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """What a trainer fine-tunes: the UNet (the encoders and the VAE stay frozen)."""
        return {"unet": self.unet}
