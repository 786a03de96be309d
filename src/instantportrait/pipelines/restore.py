"""DIIRPipeline: FPGA's DDIM-inversion identity restoration of face crops (Algorithm 1).

Components: a frozen SD1.5-architecture ``vae``/``text_encoder``/``tokenizer``/``unet``, a
landmark ``controlnet`` (any diffusers ``ControlNetModel``, e.g. FPGA's ID-ControlNet in
landmark-only mode) and a DDIM ``scheduler``. One call restores a batch of face crops (several
faces of one image run together; spec §4.2 "multi-ID restoration"):

1. ``Z_hat_0 = VAE_enc(I_Bro)`` (posterior mode times the scaling factor);
2. DDIM inversion at CFG 1 with the same prompt, landmark image and F_id, caching ``Z_hat_t``
   and every UNet ``attn1`` output ``SA^C_t`` (:func:`~..restoration.inversion.ddim_inversion`);
3. from ``Z_T = Z_hat_T``, DDIM sampling with CFG; at each step the ``attn1`` outputs are
   fused with the cached ones under the face mask inside the same forward pass (line 6) and the
   new latent is fused with ``Z_hat_{t-1}`` (line 8), both by
   :func:`~..restoration.fusion.mgff`;
4. ``I_R = VAE_dec(Z_0)``.

The identity embedding F_id, when given (``id_embeds``), goes to the ControlNet only: through
the ControlNet's own ``id_conditioning_kwargs(id_embeds)`` when it defines one, as the
``id_embeds=`` argument of its ``forward`` when it takes one (FPGA's ``IDControlNetModel``),
else as ``cross_attention_kwargs={"id_embeds": ...}`` for its attention processors.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from ..errors import InputError
from ..io import check_prompt
from ..model_check import ModelMismatchError
from ..model_sources import loading_error
from ..restoration.attention import SelfAttentionStore, self_attention_fusion
from ..restoration.fusion import STATS_REGIONS, mgff, resize_mask
from ..restoration.inversion import InversionCache, ddim_inversion, ddim_step
from ..writer import atomic_directory
from .edit import image_to_tensor, tensor_to_images
from .step_callbacks import StepCallback, StepCallbackMixin, rows_for
from .vae_latents import decode_latents, encode_raw, to_diffusion_latents, vae_scale_factor

__all__ = ["DIIRPipeline", "DIIRPipelineOutput"]


class DIIRPipelineOutput(BaseOutput):
    """``images``: the restored crops (PIL list, numpy or tensor as ``output_type``);
    ``latents``: the final Z_0; ``inversion``: the :class:`InversionCache` (Z_hat per step)."""

    images: Any
    latents: torch.Tensor
    inversion: InversionCache | None = None


def control_to_tensor(image: Image.Image) -> torch.Tensor:
    """A condition image as diffusers' ControlNets read it: ``(1, 3, H, W)`` in ``[0, 1]``."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


#: how to provide a DIIR model, in every "not found" line.
DIIR_HOW = (
    "pass a diffusers folder with vae, text_encoder, tokenizer, unet, controlnet (landmark "
    "ControlNet) and scheduler, or a Hub id (`instantportrait init-tiny DIR --kind restore` "
    "makes a tiny one; `train fpga` makes an FPGA folder that restores too)"
)


class DIIRPipeline(StepCallbackMixin, DiffusionPipeline):
    """Restore face crops with a landmark ControlNet, DDIM inversion and masked AdaIN fusion.

    Args:
        vae, text_encoder, tokenizer, unet: the frozen SD1.5-architecture model.
        controlnet: a landmark ``ControlNetModel`` (or subclass taking an ID embedding).
        scheduler: a ``DDIMScheduler`` (its betas; the timesteps of ``num_inference_steps``).
        resolution: the crop resolution DIIR works at (512 for SD1.5; tiny bundles use 64).
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(
        self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, resolution: int = 512
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
        )
        self.register_to_config(resolution=int(resolution))
        self.vae_scale_factor = vae_scale_factor(vae)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a DIIR folder (``init-tiny --kind restore`` makes one); one line when missing."""
        from ..model_check import check_model
        from ..model_sources import locate

        name = str(pretrained_model_name_or_path)
        how = DIIR_HOW
        found = check_model(name, "restore", "model", how=how)
        if found.kind == "fpga":
            raise ModelMismatchError(
                f"model {name}: an FPGA pipeline folder; load it with "
                "FaceRestorer.from_pretrained (DIIR on FPGA's components)"
            )
        where = str(locate(name, "model", how))
        try:
            return super().from_pretrained(where, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            hub = not Path(name).expanduser().exists()
            raise loading_error(exc, f"{name}: could not load", hub=hub) from exc

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save as safetensors atomically."""
        kwargs.setdefault("safe_serialization", True)
        with atomic_directory(save_directory, overwrite=True) as tmp:
            super().save_pretrained(tmp, **kwargs)

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        prompt: str | Sequence[str],
        image: Sequence[Image.Image],
        control_image: Sequence[Image.Image],
        mask: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float,
        stats_region: str,
        id_embeds: torch.Tensor | None,
    ) -> None:
        """One clear line for any invalid argument."""
        n = len(image)
        if n == 0:
            raise InputError("image: at least one face crop is required")
        if len(control_image) != n:
            raise InputError(f"control_image: {len(control_image)} landmark images for {n} crops")
        sizes = {im.size for im in [*image, *control_image]}
        if len(sizes) != 1:
            raise InputError(f"image/control_image: all crops must share one size, got {sizes}")
        (w, h) = sizes.pop()
        if w % self.vae_scale_factor or h % self.vae_scale_factor:
            raise InputError(
                f"image: crop size {w}x{h} must be a multiple of {self.vae_scale_factor}"
            )
        if mask.ndim != 4 or mask.shape[0] not in (1, n) or tuple(mask.shape[-2:]) != (h, w):
            raise InputError(f"mask: expected ({n}, 1, {h}, {w}), got {tuple(mask.shape)}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) not in (1, n):
            raise InputError(f"prompt: {len(prompts)} prompts for {n} crops")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise InputError(f"num_inference_steps: a positive integer, got {num_inference_steps}")
        if guidance_scale < 1:
            raise InputError(f"guidance_scale: must be >= 1, got {guidance_scale}")
        if stats_region not in STATS_REGIONS:
            raise InputError(f"stats_region: one of {', '.join(STATS_REGIONS)}")
        if id_embeds is not None and (id_embeds.ndim != 3 or id_embeds.shape[0] not in (1, n)):
            raise InputError(
                f"id_embeds: expected ({n}, tokens, dim), got {tuple(id_embeds.shape)}"
            )

    # ------------------------------------------------------------------ the model
    def encode_text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        from ..text import encode_prompts

        dtype = (self.unet or self.text_encoder).dtype  # a text-encoder-only pipeline too
        return encode_prompts(self.tokenizer, self.text_encoder, texts, device, dtype)

    def controlnet_id_kwargs(self, id_embeds: torch.Tensor | None) -> dict[str, Any]:
        """How F_id reaches the ControlNet (see the module docstring)."""
        if id_embeds is None:
            return {}
        hook = getattr(self.controlnet, "id_conditioning_kwargs", None)
        if callable(hook):
            return hook(id_embeds)
        if "id_embeds" in inspect.signature(self.controlnet.forward).parameters:
            return {"id_embeds": id_embeds}
        return {"cross_attention_kwargs": {"id_embeds": id_embeds}}

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        control: torch.Tensor,
        id_embeds: torch.Tensor | None,
        conditioning_scale: float,
    ) -> torch.Tensor:
        """eps_theta(z_t, t, C, F_id, I_ldm): the landmark ControlNet's residuals into the UNet."""
        down, mid = self.controlnet(
            latents,
            t,
            encoder_hidden_states=text,
            controlnet_cond=control,
            conditioning_scale=conditioning_scale,
            return_dict=False,
            **self.controlnet_id_kwargs(id_embeds),
        )
        return self.unet(
            latents,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: Sequence[Image.Image],
        control_image: Sequence[Image.Image],
        mask: torch.Tensor,
        id_embeds: torch.Tensor | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        negative_prompt: str = "",
        controlnet_conditioning_scale: float = 1.0,
        stats_region: str = "global",
        fuse_attention: bool = True,
        fuse_latents: bool = True,
        cache_device: torch.device | str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> DIIRPipelineOutput | tuple:
        """Restore ``image`` (face crops) guided by ``control_image`` (their landmarks).

        Args:
            prompt: the prompt C (one, or one per crop).
            image: I_Bro, the face crops (PIL, one size, a multiple of 8).
            control_image: I_ldm, the rendered landmarks of each crop, same size.
            mask: M_B ``(B, 1, H, W)`` in ``[0, 1]`` at the crops' size (smoothed face mask).
            id_embeds: F_id ``(B, tokens, dim)`` or ``None`` (landmarks and inversion only).
            num_inference_steps: T (paper: 30).
            guidance_scale: CFG of the regeneration (paper: 5; the inversion uses 1).
            stats_region: AdaIN statistics of MGFF (``global``, ``face``, ``literal``).
            fuse_attention / fuse_latents: Algorithm 1 lines 6 / 8 (both on by default).
            cache_device: where the cached self-attention features wait between the inversion
                and the regeneration (default: beside the model; ``"cpu"`` saves accelerator
                memory: about 11.5 M values per face and step at 512 px, spec §4.3).
            output_type: ``pil``, ``np``, ``pt`` or ``latent``.
            callback_on_step_end / callback_on_step_end_tensor_inputs: as in diffusers
                (:mod:`~instantportrait.pipelines.step_callbacks`), after each regeneration
                step (after MGFF): ``latents`` and ``prompt_embeds`` (``[negative; prompt]``
                rows while guided). The inversion, deterministic, takes no callback and no
                ``latents``: its start is the encoded image.
        """
        image, control_image = list(image), list(control_image)
        self.check_inputs(
            prompt,
            image,
            control_image,
            mask,
            num_inference_steps,
            guidance_scale,
            stats_region,
            id_embeds,
        )
        names = self.callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        n = len(image)
        device = self._execution_device
        dtype = self.unet.dtype
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        prompts = [prompts[0]] * n if len(prompts) == 1 else prompts
        prompts = [
            check_prompt(p, self.tokenizer, name=f"prompt[{i}]") for i, p in enumerate(prompts)
        ]
        text = self.encode_text(prompts, device)
        self._guidance_scale = float(guidance_scale)
        uncond = (
            self.encode_text([negative_prompt or ""] * n, device)
            if self.do_classifier_free_guidance
            else None
        )
        control = torch.cat([control_to_tensor(c) for c in control_image]).to(device, dtype)
        if id_embeds is not None:
            id_embeds = id_embeds.to(device, dtype).expand(n, -1, -1)

        # 1: Z_hat_0 = VAE_enc(I_Bro)
        pixels = torch.cat([image_to_tensor(im.convert("RGB")) for im in image])
        pixels = pixels.to(self.vae.device, self.vae.dtype)
        z0 = to_diffusion_latents(self.vae, encode_raw(self.vae, pixels)).to(device, dtype)
        latent_hw = tuple(z0.shape[-2:])
        latent_mask = resize_mask(mask.to(device), latent_hw).to(dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        store = SelfAttentionStore(
            latent_hw=latent_hw, stats_region=stats_region, cache_device=cache_device
        )
        store.set_mask(mask.to(device, dtype))
        scale = float(controlnet_conditioning_scale)

        def eps_single(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.predict_noise(z, t, text, control, id_embeds, scale)

        def eps_guided(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if uncond is None or not self.do_classifier_free_guidance:
                return eps_single(z, t)
            both = self.predict_noise(
                torch.cat([z, z]),
                torch.cat([t, t]),
                torch.cat([uncond, text]),
                torch.cat([control, control]),
                None if id_embeds is None else torch.cat([id_embeds, id_embeds]),
                scale,
            )
            e_u, e_c = both.chunk(2)
            return e_u + self.guidance_scale * (e_c - e_u)

        acp = self.scheduler.alphas_cumprod.to(device, torch.float64)
        final = torch.as_tensor(self.scheduler.final_alpha_cumprod, dtype=torch.float64)
        with self_attention_fusion(self.unet, store):
            # 2: inversion caching Z_hat_t and SA^C_t
            cache = ddim_inversion(
                eps_single, z0, self.scheduler, store, progress=self._progress_enabled()
            )
            # 3-9: regeneration with fused self-attention and latents
            timesteps = cache.timesteps
            self._num_timesteps = len(timesteps)
            z = cache.noisiest
            store.mode = "inject" if fuse_attention else "off"
            try:
                for i, t in enumerate(self.progress_bar(timesteps)):
                    store.timestep = t
                    tt = torch.full((n,), t, device=device, dtype=torch.long)
                    eps = eps_guided(z, tt)
                    prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                    abar_prev = (acp[prev] if prev >= 0 else final.to(device)).to(z.dtype)
                    z = ddim_step(z, eps, acp[t].to(z.dtype), abar_prev)
                    if fuse_latents:
                        z = mgff(z, cache.previous(i), latent_mask, stats_region)  # type: ignore[arg-type]
                    if names:
                        pe = text if uncond is None else torch.cat([uncond, text])
                        state = self.run_step_callback(
                            callback_on_step_end, names, i, t, {"latents": z, "prompt_embeds": pe}
                        )
                        z, pe = state["latents"], state["prompt_embeds"]
                        if uncond is not None and pe.shape[0] == 2 * n:
                            uncond, text = pe.chunk(2)
                        else:  # a callback turned guidance off: the conditional rows
                            uncond, text = None, rows_for(pe, n)
            finally:
                store.mode = "off"
                store.clear()

        if output_type == "latent":
            images: Any = z
        else:
            decoded = decode_latents(self.vae, z)
            images = tensor_to_images(decoded.clamp(-1, 1), output_type)
        if not return_dict:
            return (images, z, cache)
        return DIIRPipelineOutput(images=images, latents=z, inversion=cache)

    def _progress_enabled(self) -> bool:
        return not getattr(self, "_progress_bar_config", {}).get("disable", False)


def write_tiny_restore(directory: Path, *, seed: int = 0, resolution: int = 64) -> None:
    """``init-tiny --kind restore``: a tiny SD1.5-architecture model + tiny landmark ControlNet.

    The ControlNet's zero-initialised convolutions get small random weights so that the
    landmark image actually changes the output (the bundle exercises the code; it is noise).
    """
    from diffusers import ControlNetModel, DDIMScheduler

    from ..components import SD15_SCHEDULER_CONFIG, _seeded, build_components

    parts = build_components("tiny", seed=seed, in_channels=4)
    with _seeded(seed + 1):
        controlnet = ControlNetModel.from_unet(
            parts["unet"], conditioning_embedding_out_channels=(8, 16, 16, 32)
        )
        for name, p in controlnet.named_parameters():
            if "zero_conv" in name or "controlnet_mid_block" in name or "conv_out" in name:
                torch.nn.init.normal_(p, std=0.02)
    scheduler = DDIMScheduler(
        **SD15_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipe = DIIRPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        controlnet=controlnet.eval(),
        scheduler=scheduler,
        resolution=resolution,
    )
    pipe.save_pretrained(directory)
