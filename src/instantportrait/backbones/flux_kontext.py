"""FLUX.1 Kontext as an edit backbone: the image on the sequence, a velocity out.

The edit image's latents are packed into 2x2 patches and appended to the noisy tokens along
the sequence; their position ids carry first index 1 (the noisy tokens carry 0). Text is
CLIP-L's pooled embedding plus T5's tokens. Guidance is distilled into the scalar
``guidance`` input, so there are no CFG branches. Every step matches diffusers'
``FluxKontextPipeline`` exactly (the parity test compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .flow_backbone import RectifiedFlowBackbone, flux_shift_mu

__all__ = ["FluxKontextBackbone", "KontextCondition", "flux_shift_mu"]


@dataclass
class KontextCondition:
    """The instruction, encoded: T5 tokens ``(B, L, D)``, CLIP's pooled ``(B, P)``, text ids."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor


class FluxKontextBackbone(RectifiedFlowBackbone):
    """The edit-backbone interface over FLUX.1 Kontext's components (see
    :mod:`instantportrait.backbones`): ``encode_prompt``, ``encode_image``, ``predict``,
    ``decode``, ``parameterisation`` and ``trainable_modules``.

    Latents handed between the methods are *unpacked* ``(B, 16, h, w)`` (normalised by the
    VAE's shift and scale); packing into tokens happens inside :meth:`predict`, so nothing
    outside this class knows the image travels on the sequence.
    """

    parameterisation = "flow"
    image_on = "sequence"

    def __init__(
        self,
        transformer: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        blocks = vae.config.block_out_channels if vae is not None else (0,) * 4
        #: pixels per latent (8 for FLUX's VAE); a packed token covers twice that per side.
        self.vae_scale_factor = 2 ** (len(blocks) - 1)

    # ------------------------------------------------------------------ text

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], max_sequence_length: int = 512) -> KontextCondition:
        """CLIP-L's pooled embedding and T5's token embeddings of ``prompts``."""
        clip_ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        enc = self.text_encoder
        pooled = enc(clip_ids.to(enc.device), output_hidden_states=False).pooler_output
        t5_ids = self.tokenizer_2(
            prompts,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        enc2 = self.text_encoder_2
        embeds = enc2(t5_ids.to(enc2.device), output_hidden_states=False)[0].to(enc2.dtype)
        pooled = pooled.to(enc.dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=enc.dtype)
        return KontextCondition(embeds, pooled, text_ids)

    # ------------------------------------------------------------------ images

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> normalised latents ``(B, 16, H/8, W/8)`` (the
        posterior's mode, as diffusers' Kontext pipeline takes it)."""
        vae = self.vae
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return (dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> ``(B, 3, H, W)`` in about [-1, 1]."""
        vae = self.vae
        z = latents / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z.to(vae.dtype), return_dict=False)[0]

    @staticmethod
    def pack(latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, h/2 * w/2, 4C)``: 2x2 patches as tokens."""
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of :meth:`pack` for latents of ``h x w``."""
        b, _, d = tokens.shape
        x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, d // 4, h, w)

    @staticmethod
    def position_ids(h: int, w: int, first: int, device, dtype) -> torch.Tensor:
        """Rotary position ids ``(h/2 * w/2, 3)`` of a packed latent: (``first``, row, col);
        ``first`` is 0 for the noisy tokens and 1 for the edit image's."""
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 0] = first
        ids[..., 1] = torch.arange(h // 2)[:, None]
        ids[..., 2] = torch.arange(w // 2)[None, :]
        return ids.reshape(-1, 3).to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ the network

    def predict(
        self,
        x_sigma: torch.Tensor,
        sigma: torch.Tensor,
        cond: KontextCondition,
        image_latents: torch.Tensor,
        guidance: float | torch.Tensor | None = 2.5,
    ) -> torch.Tensor:
        """The velocity ``v_hat`` ``(B, 16, h, w)`` at noise level ``sigma`` (``(B,)`` in
        [0, 1]), given the edit image's latents (same spatial size here; any size works on
        the sequence) and the distilled guidance scale."""
        b, _, h, w = x_sigma.shape
        hi, wi = image_latents.shape[-2:]
        tokens = self.pack(x_sigma)
        image_tokens = self.pack(image_latents.to(x_sigma.dtype))
        if image_tokens.shape[0] != b:
            image_tokens = image_tokens.expand(b, -1, -1)
        ids = torch.cat(
            [
                self.position_ids(h, w, 0, x_sigma.device, x_sigma.dtype),
                self.position_ids(hi, wi, 1, x_sigma.device, x_sigma.dtype),
            ]
        )
        g = None
        if self.transformer.config.guidance_embeds:
            g = torch.as_tensor(guidance, device=x_sigma.device, dtype=torch.float32)
            g = g.reshape(-1).expand(b) if g.numel() == 1 else g
        out = self.transformer(
            hidden_states=torch.cat([tokens, image_tokens], dim=1),
            timestep=sigma.to(x_sigma.dtype).expand(b),
            guidance=g,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.prompt_embeds,
            txt_ids=cond.text_ids,
            img_ids=ids,
            return_dict=False,
        )[0]
        return self.unpack(out[:, : tokens.shape[1]], h, w)
