"""Qwen-Image-Edit as an edit backbone: the image on the sequence and in the prompt, a
velocity out, true classifier-free guidance.

The edit image goes in twice: its VAE latents (16 channels, normalised by the VAE's
per-channel mean and std) are packed into 2x2 patches and appended to the noisy tokens along
the sequence (the transformer's rotary embedding gives them frame index 1 through
``img_shapes``), and the image itself goes through the Qwen2.5-VL encoder with the instruction,
inside the model's chat prompt template, whose last hidden states (the system prompt's tokens
dropped) are the text condition. There is no guidance input: guidance is true CFG, a second call
with the negative prompt, combined by :func:`true_cfg`. Every step matches diffusers'
``QwenImageEditPipeline`` (the parity test compares the two).

The later releases (``Qwen/Qwen-Image-Edit-2509`` and ``-2511``, diffusers'
``QwenImageEditPlusPipeline``) are the same backbone with ``plus=True``: the user turn names
each image, ``Picture 1: <|vision_start|><|image_pad|><|vision_end|>``, before the instruction
(:data:`PLUS_PROMPT_TEMPLATE`), and the VL encoder reads a condition image of about 384 x 384
pixels (:func:`condition_image_size`) rather than the image the VAE reads. 2511's transformer
sets ``zero_cond_t`` in its config (the image tokens modulated at timestep 0); the transformer
applies it itself, so :meth:`QwenEditBackbone.predict` is the same call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .flow_backbone import RectifiedFlowBackbone
from .flux_kontext import FluxKontextBackbone

__all__ = [
    "PLUS_PROMPT_TEMPLATE",
    "PROMPT_TEMPLATE",
    "QwenEditBackbone",
    "QwenEditCondition",
    "condition_image_size",
    "true_cfg",
]

#: The chat template Qwen-Image-Edit was trained with: a system prompt, then the user turn with
#: the image's vision tokens before the instruction (diffusers' ``prompt_template_encode``).
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
    "texture, objects, background), then explain how the user's text instruction should alter "
    "or modify the image. Generate a new image that meets the user's requirements while "
    "maintaining consistency with the original input where appropriate.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
#: Leading hidden states dropped from the encoder's output: the system prompt's tokens under
#: the published tokenizer (diffusers' ``prompt_template_encode_start_idx``). A fixed count,
#: as the model was trained; the tiny tokenizer splits the template differently.
PROMPT_TEMPLATE_DROP = 64
#: Qwen-Image-Edit-2509/2511's template (diffusers' ``QwenImageEditPlusPipeline``): the same
#: system prompt (so the same drop), and in the user turn one ``Picture N:`` label with its
#: vision tokens per input image before the instruction (one image here).
PLUS_PROMPT_TEMPLATE = PROMPT_TEMPLATE.replace(
    "<|vision_start|><|image_pad|><|vision_end|>{}",
    "Picture 1: <|vision_start|><|image_pad|><|vision_end|>{}",
)
#: The area (pixels) of the image the 2509/2511 VL encoder reads (diffusers'
#: ``CONDITION_IMAGE_SIZE``), whatever the output size.
CONDITION_IMAGE_AREA = 384 * 384


def condition_image_size(width: int, height: int, area: int = CONDITION_IMAGE_AREA) -> tuple:
    """``(width, height)`` of the 2509/2511 VL encoder's condition image: the input's aspect
    ratio at about ``area`` pixels, each side rounded to the nearest multiple of 32 (diffusers'
    ``calculate_dimensions``). 96 x 64 -> sqrt(147456 * 1.5) = 470.3 -> 480, 313.5 -> 320."""
    import math

    ratio = width / height
    w = math.sqrt(area * ratio)
    return round(w / 32) * 32, round(w / ratio / 32) * 32


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Qwen-Image's true classifier-free guidance on packed velocities ``(B, N, D)``.

    ``v = v_u + s (v_c - v_u)`` (Ho & Salimans 2022, eq. 6, with ``s = 1 + w``), then rescaled
    per token so its norm over the channels equals the conditional prediction's:
    ``v <- v * ||v_c|| / ||v||``. This is diffusers' ``QwenImageEditPipeline.__call__``
    (``comb_pred`` and ``cond_norm / noise_norm``); the norm is taken on the packed token's 64
    values (16 latent channels x 2 x 2), so the rescale must run before unpacking.
    """
    comb = uncond + scale * (cond - uncond)
    return comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))


@dataclass
class QwenEditCondition:
    """The instruction and edit image, encoded: the VL encoder's hidden states ``(B, L, D)``,
    their mask ``(B, L)`` (``None`` when no token is padding) and, for true CFG, the negative
    prompt's own condition."""

    prompt_embeds: torch.Tensor
    mask: torch.Tensor | None = None
    negative: QwenEditCondition | None = None

    def repeat(self, n: int) -> QwenEditCondition:
        """Each row ``n`` times, adjacent (``num_images_per_prompt``)."""
        if n == 1:
            return self
        return QwenEditCondition(
            self.prompt_embeds.repeat_interleave(n, 0),
            None if self.mask is None else self.mask.repeat_interleave(n, 0),
            None if self.negative is None else self.negative.repeat(n),
        )


class QwenEditBackbone(RectifiedFlowBackbone):
    """The edit-backbone interface over Qwen-Image-Edit's components (see
    :mod:`instantportrait.backbones`): ``encode_prompt``, ``encode_image``, ``predict``,
    ``x0``/``eps``, ``decode``, ``parameterisation`` and ``trainable_modules``.

    Latents handed between the methods are *unpacked* ``(B, 16, h, w)`` (normalised by the
    VAE's latents mean and std, the VAE's frame axis removed); packing happens inside
    :meth:`predict`. Unlike Kontext, :meth:`encode_prompt` needs the edit image too: Qwen2.5-VL
    reads it with the instruction.
    """

    parameterisation = "flow"
    image_on = "sequence"

    def __init__(
        self,
        transformer: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        processor: Any,
        plus: bool = False,
    ) -> None:
        self.transformer = transformer
        #: the 2509/2511 prompt template (``Picture 1:``); the caller hands :meth:`encode_prompt`
        #: the condition image (:func:`condition_image_size`).
        self.plus = bool(plus)
        self.vae = vae
        self.text_encoder, self.tokenizer, self.processor = text_encoder, tokenizer, processor
        #: pixels per latent (8: three 2x downsamplings); a packed token covers twice that.
        self.vae_scale_factor = 2 ** len(vae.temperal_downsample) if vae is not None else 8

    # ------------------------------------------------------------------ text (and image)

    @torch.no_grad()
    def encode_prompt(
        self,
        prompts: list[str],
        images: list[Any],
        negative_prompts: list[str] | None = None,
    ) -> QwenEditCondition:
        """Qwen2.5-VL's last hidden states of each prompt with its edit image (PIL: the image
        at the size the edit runs at, or for ``plus`` the ~384 x 384 condition image), the
        system prompt dropped; with ``negative_prompts``, theirs too (with the same images) for
        true CFG."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        embeds, mask = self._encode(prompts, images)
        negative = None
        if negative_prompts is not None:
            negative = QwenEditCondition(*self._encode(list(negative_prompts), images))
        return QwenEditCondition(embeds, mask, negative)

    def _encode(self, prompts: list[str], images: list[Any]) -> tuple:
        enc = self.text_encoder
        template = PLUS_PROMPT_TEMPLATE if self.plus else PROMPT_TEMPLATE
        inputs = self.processor(
            text=[template.format(p) for p in prompts],
            images=images,
            padding=True,
            return_tensors="pt",
        ).to(enc.device)
        hidden = enc(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            output_hidden_states=True,
        ).hidden_states[-1]
        keep = inputs["attention_mask"].bool()
        rows = [h[k][PROMPT_TEMPLATE_DROP:] for h, k in zip(hidden, keep)]
        length = max(r.shape[0] for r in rows)
        embeds = torch.stack(
            [torch.cat([r, r.new_zeros(length - len(r), r.shape[1])]) for r in rows]
        )
        mask = torch.stack(
            [(torch.arange(length, device=embeds.device) < len(r)).long() for r in rows]
        )
        return embeds.to(enc.dtype), (None if bool(mask.all()) else mask)

    # ------------------------------------------------------------------ images

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1)
        mean = torch.tensor(cfg.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(cfg.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> normalised latents ``(B, 16, H/8, W/8)`` (the
        posterior's mode, as diffusers' Qwen-Image-Edit pipeline takes it)."""
        vae = self.vae
        z = vae.encode(pixels.to(vae.device, vae.dtype)[:, :, None]).latent_dist.mode()[:, :, 0]
        mean, std = self._stats(z)
        return (z - mean) / std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> ``(B, 3, H, W)`` in about [-1, 1]."""
        vae = self.vae
        latents = latents.to(vae.dtype)
        mean, std = self._stats(latents)
        z = latents / (1.0 / std) + mean  # diffusers' order of operations, bit for bit
        return vae.decode(z[:, :, None], return_dict=False)[0][:, :, 0]

    # ------------------------------------------------------------------ the network

    def _velocity(self, hidden, sigma, cond: QwenEditCondition, img_shapes) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden,
            timestep=sigma,
            guidance=None,
            encoder_hidden_states=cond.prompt_embeds,
            encoder_hidden_states_mask=cond.mask,
            img_shapes=img_shapes,
            return_dict=False,
        )[0]

    def predict(
        self,
        x_sigma: torch.Tensor,
        sigma: torch.Tensor,
        cond: QwenEditCondition,
        image_latents: torch.Tensor,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """The velocity ``v_hat`` ``(B, 16, h, w)`` at noise level ``sigma`` (``(B,)`` or one
        value in [0, 1]), given the edit image's latents. With ``guidance`` > 1 and a negative
        condition in ``cond``: true CFG (:func:`true_cfg`), two transformer calls."""
        b, _, h, w = x_sigma.shape
        hi, wi = image_latents.shape[-2:]
        pack = FluxKontextBackbone.pack
        tokens = pack(x_sigma)
        image_tokens = pack(image_latents.to(x_sigma.dtype))
        if image_tokens.shape[0] != b:
            image_tokens = image_tokens.expand(b, -1, -1)
        hidden = torch.cat([tokens, image_tokens], dim=1)
        t = sigma.to(x_sigma.dtype).reshape(-1).expand(b)
        img_shapes = [[(1, h // 2, w // 2), (1, hi // 2, wi // 2)]] * b
        n = tokens.shape[1]
        v = self._velocity(hidden, t, cond, img_shapes)[:, :n]
        if guidance is not None and guidance > 1 and cond.negative is not None:
            v_neg = self._velocity(hidden, t, cond.negative, img_shapes)[:, :n]
            v = true_cfg(v, v_neg, float(guidance))
        return FluxKontextBackbone.unpack(v, h, w)
