"""FPGAPipeline: identity-preserving portraits of one or several people (FPGA §3, §7).

A frozen SD1.5 (``unet``, ``vae``, ``text_encoder``) steered by the ID-ControlNet: the
condition image (skeleton and/or landmarks, :mod:`instantportrait.conditions`) goes into the
ControlNet, each identity's F_id (face image -> ArcFace + CLIP-vision -> resampler) into the
ControlNet's cross-attention. With K > 1 identities every ControlNet cross-attention layer
uses mask-guided multi-ID attention: identity k only inside its face-region mask, no identity
term outside every mask. Masks come from the keypoints' head points (:func:`face_region_masks`,
people assigned left to right) or are given.

Sampling (spec §7): DDIM 30 steps, CFG 5; the unconditional branch uses the null text and
keeps F_id and the condition image (only text was dropped in training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..conditions import box_mask, head_boxes, left_to_right
from ..errors import InputError
from ..io import check_prompt, load_image
from ..models.id_controlnet import IDControlNetModel  # noqa: F401  (see below)
from ..models.resampler import IDResampler
from .edit import tensor_to_images
from .id_encoding import IDEncodingMixin
from .step_callbacks import StepCallback, StepCallbackMixin, rows_for
from .vae_latents import decode_latents, vae_scale_factor

# diffusers loads a pipeline's custom components only from modules already imported: the
# imports above make ``FPGAPipeline.from_pretrained`` find IDControlNetModel and IDResampler.
__all__ = ["FPGAPipeline", "FPGAPipelineOutput", "IDControlNetModel", "IDResampler"]


class FPGAPipelineOutput(BaseOutput):
    """``images``: PIL list (or numpy / tensor / latents by ``output_type``)."""

    images: Any


def face_region_masks(
    keypoints: np.ndarray, size: tuple[int, int], count: int, expand: float = 1.3
) -> np.ndarray:
    """``(count, H, W)`` face-region masks of the ``count`` leftmost people (spec §3 [rec]).

    Each mask is the box of a person's head keypoints (nose, eyes, ears) grown ``expand``×;
    identities are assigned to people left to right. A person without head points, or fewer
    people than identities, is one clear error.
    """
    order = left_to_right(keypoints)
    if count > len(order):
        raise InputError(f"--pose: {count} identities but {len(order)} people in the keypoints")
    boxes = head_boxes(keypoints, expand)
    masks = []
    for rank, person in enumerate(order[:count]):
        if boxes[person] is None:
            raise InputError(
                f"--pose: person {rank + 1} from the left has no head keypoints; give --face-mask"
            )
        masks.append(box_mask(boxes[person], size))
    return np.stack(masks)


class FPGAPipeline(IDEncodingMixin, StepCallbackMixin, DiffusionPipeline):
    """Text-to-portrait with identities and a pose/landmark condition (ID-ControlNet).

    Args:
        vae, text_encoder, tokenizer, unet: the frozen SD1.5.
        controlnet: an :class:`~instantportrait.models.id_controlnet.IDControlNetModel`.
        resampler: the :class:`~instantportrait.models.resampler.IDResampler`.
        image_encoder: a ``transformers`` CLIP vision tower (penultimate states feed the
            resampler).
        scheduler: DDIM (any diffusers scheduler works).
        face_embedder / face_embedder_weights: the recognition network of F_id, by the face
            stack's name (``arcface``, ``dlib``, ``facenet``) and weight file; loaded on first
            use, or set with :meth:`set_face_embedder`.
        default_steps / default_guidance_scale: 30 and 5 (the paper's settings).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->resampler->controlnet->unet->vae"

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        controlnet,
        resampler,
        image_encoder,
        scheduler,
        face_embedder: str = "arcface",
        face_embedder_weights: str | None = None,
        default_steps: int = 30,
        default_guidance_scale: float = 5.0,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            resampler=resampler,
            image_encoder=image_encoder,
            scheduler=scheduler,
        )
        self.register_identity_config(
            face_embedder, face_embedder_weights, default_steps, default_guidance_scale
        )
        self.vae_scale_factor = vae_scale_factor(vae)

    # ------------------------------------------------------------------ inputs
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        from ..text import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, prompts, device)

    def check_inputs(self, prompt, image, id_embeds, id_images, id_masks, height, width):
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise InputError("prompt: a string or a non-empty list of strings")
        prompts = [check_prompt(p, self.tokenizer) for p in prompt]
        if image is None:
            raise InputError("image: the condition image (skeleton and/or landmarks) is required")
        if (id_embeds is None) == (id_images is None):
            raise InputError("give exactly one of id_images and id_embeds")
        k = len(id_images) if id_images is not None else id_embeds.shape[-3]
        if k < 1:
            raise InputError("id_images: at least one identity")
        if k > 1 and id_masks is None:
            raise InputError(f"id_masks: {k} identities need one face-region mask each")
        if id_masks is not None and len(id_masks) != k:
            raise InputError(f"id_masks: {len(id_masks)} masks for {k} identities")
        f = self.vae_scale_factor
        for name, v in (("height", height), ("width", width)):
            if v is not None and (v < f or v % f):
                raise InputError(f"{name}: a positive multiple of {f}, got {v}")
        return prompts, k

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: Any = None,
        id_images: Sequence[Any] | None = None,
        id_embeds: torch.Tensor | None = None,
        id_masks: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        num_images_per_prompt: int = 1,
        controlnet_conditioning_scale: float = 1.0,
        id_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        """Generate portraits.

        Args:
            prompt: text prompt(s).
            image: the condition image (PIL/path/array; skeleton and/or landmarks).
            id_images: K face images, one per identity; or ``id_embeds`` F_id ``(K, T, D)``.
            id_masks: K face-region masks ``(K, H, W)`` in [0, 1] (needed for K > 1; for one
                identity, an optional restriction of it to a region).
            height / width: output size (default: the condition image's, snapped to 8).
            num_inference_steps / guidance_scale: default 30 / 5.
            id_scale: weight of the ID term in the ControlNet attention.
            latents: the starting noise ``(B, 4, H/8, W/8)`` (default drawn from ``generator``).
            callback_on_step_end / callback_on_step_end_tensor_inputs: as in diffusers
                (:mod:`~instantportrait.pipelines.step_callbacks`): ``latents`` and
                ``prompt_embeds`` (``[negative; prompt]`` rows while guided).
        """
        prompts, k = self.check_inputs(prompt, image, id_embeds, id_images, id_masks, height, width)
        names = self.callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        steps = num_inference_steps or self.config.default_steps
        scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        device = self._execution_device
        dtype = self.unet.dtype
        cond_img = load_image(image, name="image")
        f = self.vae_scale_factor
        width = width or max(f, cond_img.width // f * f)
        height = height or max(f, cond_img.height // f * f)
        cond_img = cond_img.resize((width, height), Image.BILINEAR)

        if id_embeds is None:
            id_embeds = self.encode_identity(id_images)
        id_embeds = id_embeds.to(device, self.controlnet.dtype)
        if id_embeds.ndim == 3:
            id_embeds = id_embeds.unsqueeze(0)  # (1, K, T, D)
        masks = None
        if id_masks is not None:
            masks = torch.as_tensor(np.asarray(id_masks, dtype=np.float32))[None].to(device)

        batch = len(prompts) * num_images_per_prompt
        self._guidance_scale = float(scale)
        cfg = self.do_classifier_free_guidance
        text = self.encode_prompt(
            [p for p in prompts for _ in range(num_images_per_prompt)], device
        ).to(dtype)
        if cfg:
            null = self.encode_prompt([negative_prompt] * batch, device).to(dtype)
            text = torch.cat([null, text])
        cond = torch.from_numpy(np.asarray(cond_img, dtype=np.float32) / 255.0)
        cond = cond.permute(2, 0, 1)[None].to(device, self.controlnet.dtype)
        self.controlnet.set_id_scale(id_scale)

        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            # Read each step: a callback may turn guidance off (diffusers' CFG cutoff).
            cfg = self.do_classifier_free_guidance and text.shape[0] >= 2 * batch
            x = torch.cat([latents] * 2) if cfg else latents
            rows = x.shape[0]
            x = self.scheduler.scale_model_input(x, t)
            ctx = rows_for(text, rows)
            ids = id_embeds.expand(rows, -1, -1, -1)
            control = self.controlnet(
                x,
                t,
                ctx,
                cond.expand(rows, -1, -1, -1),
                conditioning_scale=controlnet_conditioning_scale,
                id_embeds=ids if k > 1 else ids[:, 0],
                id_masks=masks,
                return_dict=False,
            )
            noise = self.unet(
                x,
                t,
                encoder_hidden_states=ctx,
                down_block_additional_residuals=control[0],
                mid_block_additional_residual=control[1],
            ).sample
            if cfg:
                uncond, textual = noise.chunk(2)
                noise = uncond + self.guidance_scale * (textual - uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
            if names:
                state = self.run_step_callback(
                    callback_on_step_end,
                    names,
                    i,
                    t,
                    {"latents": latents, "prompt_embeds": text},
                )
                latents, text = state["latents"], state["prompt_embeds"]
        self.maybe_free_model_hooks()
        if output_type == "latent":
            images = latents
        else:
            images = tensor_to_images(decode_latents(self.vae, latents), output_type)
        if not return_dict:
            return (images,)
        return FPGAPipelineOutput(images=images)


# ---------------------------------------------------------------------- components
#: laion/CLIP-ViT-H-14 vision tower (IP-Adapter's image encoder): penultimate states 257×1280.
CLIP_VIT_H_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}

TINY_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}

#: the tiny bundle's resampler: dlib's 128-D descriptor (real, offline) stands in for ArcFace.
TINY_RESAMPLER_CONFIG: dict[str, Any] = {
    "id_embed_dim": 128,
    "clip_embed_dim": 32,
    "cross_attention_dim": 32,
    "num_tokens": 4,
    "depth": 1,
    "heads": 2,
    "dim_head": 16,
}


def fpga_components(
    size: str = "tiny", *, seed: int | None = 0, with_image_encoder: bool = True
) -> dict[str, Any]:
    """The components of an :class:`FPGAPipeline` with random weights, built from config.

    ``tiny``: tiny SD1.5-style parts, a tiny ID-ControlNet, resampler and CLIP vision tower,
    the face embedder dlib's port (128-D, real weights offline). ``sd15``: the real SD1.5
    architecture, an ID-ControlNet from its UNet, the spec's resampler (ArcFace 512, ViT-H
    1280 -> 4×768) and a ViT-H/14 vision tower (``with_image_encoder=False`` leaves it out;
    give ``id_embeds`` then).
    """
    from diffusers import DDIMScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..components import SD15_SCHEDULER_CONFIG, _seeded, build_components
    from ..models.id_controlnet import IDControlNetModel
    from ..models.resampler import IDResampler

    if size not in ("tiny", "sd15"):
        raise ValueError(f"size {size!r}: tiny or sd15")
    tiny = size == "tiny"
    parts = build_components(size, seed=seed, in_channels=4)
    with _seeded(None if seed is None else seed + 1):
        controlnet = IDControlNetModel.from_unet(
            parts["unet"],
            conditioning_embedding_out_channels=(8, 8, 16, 16) if tiny else (16, 32, 96, 256),
        )
        resampler = IDResampler(**TINY_RESAMPLER_CONFIG) if tiny else IDResampler()
        image_encoder = None
        if with_image_encoder:
            vision = CLIPVisionConfig(**(TINY_VISION_CONFIG if tiny else CLIP_VIT_H_VISION_CONFIG))
            image_encoder = CLIPVisionModelWithProjection(vision).eval()
    parts.update(
        controlnet=controlnet.eval(),
        resampler=resampler.eval(),
        image_encoder=image_encoder,
        scheduler=DDIMScheduler(
            **SD15_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        face_embedder="dlib" if tiny else "arcface",
    )
    return parts


def write_tiny_fpga(directory, *, seed: int = 0) -> None:
    """``init-tiny --kind fpga``: a tiny FPGA pipeline folder for ``generate --method fpga``."""
    FPGAPipeline(**fpga_components("tiny", seed=seed)).save_pretrained(directory)
