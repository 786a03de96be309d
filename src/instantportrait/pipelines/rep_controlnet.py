"""RepControlNetPipeline: text-to-image with a merged RepControlNet (FPGA §5).

The UNet is a plain ``UNet2DConditionModel`` of the base's shapes (the copies were folded in
by :meth:`~..models.rep_controlnet.RepControlNet.merge`); the pipeline applies the only two
additions: the :class:`~..models.rep_controlnet.ConditionAdapter`, computed once per image
and added at the UNet's first layer, and the decoupled ID attention
(:class:`~..models.rep_controlnet.IDProjections`) fed with F_id. DDIM, CFG with the
unconditional branch keeping the condition image and F_id (spec §7).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..errors import InputError
from ..io import atomic_directory, check_prompt
from ..models.rep_controlnet import adapter_injection, set_id_processors
from .edit import tensor_to_images
from .restore import control_to_tensor

__all__ = ["RepControlNetPipeline", "RepControlNetPipelineOutput"]


class RepControlNetPipelineOutput(BaseOutput):
    images: Any


class RepControlNetPipeline(DiffusionPipeline):
    """Generate with a merged RepControlNet UNet, its condition adapter and ID projections."""

    model_cpu_offload_seq = "text_encoder->adapter->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, adapter, id_projections, scheduler):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            adapter=adapter,
            id_projections=id_projections,
            scheduler=scheduler,
        )
        set_id_processors(unet, id_projections)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        kwargs.setdefault("safe_serialization", True)
        with atomic_directory(save_directory, overwrite=True) as tmp:
            super().save_pretrained(tmp, **kwargs)

    def encode_text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        from ..text import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, texts, device, self.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: Image.Image | Sequence[Image.Image],
        id_embeds: torch.Tensor | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        negative_prompt: str = "",
        adapter_scale: float = 1.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
    ) -> RepControlNetPipelineOutput:
        """Images for ``prompt`` under the condition ``image`` (skeleton/landmarks, [0, 1] RGB).

        ``adapter_scale`` scales the adapter's residual (the merge's beta scales the copies).
        """
        images = [image] if isinstance(image, Image.Image) else list(image)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) == 1:
            prompts = prompts * len(images)
        if len(images) == 1:
            images = images * len(prompts)
        if len(images) != len(prompts):
            raise InputError(f"image: {len(images)} condition images for {len(prompts)} prompts")
        if num_inference_steps < 1:
            raise InputError("num_inference_steps: must be at least 1")
        w, h = images[0].size
        if w % self.vae_scale_factor or h % self.vae_scale_factor:
            raise InputError(f"image: size {w}x{h} must be a multiple of {self.vae_scale_factor}")
        prompts = [check_prompt(p, self.tokenizer, name="prompt") for p in prompts]
        n = len(prompts)
        device, dtype = self._execution_device, self.unet.dtype
        text = self.encode_text(prompts, device)
        cfg = guidance_scale > 1
        if cfg:
            text = torch.cat([self.encode_text([negative_prompt] * n, device), text])
        cond = torch.cat([control_to_tensor(im) for im in images]).to(device, dtype)
        residual = self.adapter(cond) * adapter_scale
        kwargs = None
        if len(self.id_projections.to_k):
            ids = None if id_embeds is None else id_embeds.to(device, dtype).expand(n, -1, -1)
            kwargs = {"id_embeds": None if ids is None else (torch.cat([ids, ids]) if cfg else ids)}
        shape = (
            n,
            self.unet.config.in_channels,
            h // self.vae_scale_factor,
            w // self.vae_scale_factor,
        )
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        with adapter_injection(self.unet, residual, self.adapter.config.inject_at):
            for t in self.progress_bar(self.scheduler.timesteps):
                z = torch.cat([latents, latents]) if cfg else latents
                eps = self.unet(z, t, text, cross_attention_kwargs=kwargs).sample
                if cfg:
                    e_u, e_c = eps.chunk(2)
                    eps = e_u + guidance_scale * (e_c - e_u)
                latents = self.scheduler.step(eps, t, latents).prev_sample
        if output_type == "latent":
            return RepControlNetPipelineOutput(images=latents)
        sf = self.vae.config.scaling_factor
        decoded = self.vae.decode(latents.to(self.vae.dtype) / sf, return_dict=False)[0]
        return RepControlNetPipelineOutput(
            images=tensor_to_images(decoded.clamp(-1, 1), output_type)
        )
