"""FaceANetPipeline: ID-context decoupled generation (FaceA-Net, Wang et al., AAAI 2025, §3.3).

1. Split the prompt T into T_context and T_id (:func:`split_prompt`, overridable).
2. The context image x: from a text-to-image model G_c (any SDXL pipeline, given by the caller;
   "front face" is appended to T_context, as in the paper's evaluation), or a given photo.
3. Find the face (the face stack; ``face_index`` picks one, default the largest). No face:
   retry with a lower threshold, then return x with one warning (:class:`NoFaceWarning`).
4. Crop a square around it so that the face/crop ratio matches the tuning crops, resize to
   G_id's resolution, inpaint the face box with ``E(T'_id)`` (the six encoded segments
   concatenated, :func:`identity_conditioning`) and classifier-free guidance.
5. Resize back and paste through a feathered mask that is **zero outside the face box**:
   every pixel outside it is the context image's, bit for bit.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..data.face_crops import box_mask, part_boxes, square_around
from ..errors import InputError
from ..io import check_prompt, load_image
from ..models.feat_embeddings import FeatEmbeddings, identity_conditioning
from .faceanet_parts import (
    ADAPTER,
    inpaint_unet_input,
    load_identity,
    load_inpaint_components,
    masked_image,
)
from .prompt_split import split_prompt
from .vae_latents import decode_latents, encode_raw, to_diffusion_latents


class NoFaceWarning(UserWarning):
    """The context image has no detectable face; the context is returned unchanged."""


class FaceANetPipelineOutput(BaseOutput):
    """``images``: the results (PIL); ``context_images``: x before repainting; ``paste_masks``:
    the feathered paste masks (``(H, W)`` float arrays, zero outside the face box, ``None``
    without a face); ``prompts``: (T_context, T_id); ``faces_found``; ``timings`` (seconds of
    context, detection, inpainting)."""

    images: list[Image.Image]
    context_images: list[Image.Image]
    paste_masks: list[np.ndarray | None]
    prompts: list[tuple[str, str]]
    faces_found: list[bool]
    timings: dict[str, float]


def feathered_paste_mask(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """``blur(m) * m``: a soft edge inside the mask, exactly zero outside it."""
    from ..faces.masks import gaussian_blur

    m = mask.float().reshape(1, 1, *mask.shape[-2:])
    return (gaussian_blur(m, sigma) * m)[0, 0]


def paste(context: Image.Image, patch: Image.Image, alpha: np.ndarray, left: int, top: int):
    """Blend ``patch`` into ``context`` at (left, top) by ``alpha``; alpha==0 pixels untouched."""
    out = np.array(context, dtype=np.uint8)
    h, w = alpha.shape
    region = out[top : top + h, left : left + w]
    a = alpha[..., None].astype(np.float32)
    blend = a * np.asarray(patch, dtype=np.float32) + (1.0 - a) * region.astype(np.float32)
    blend = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    inside = alpha > 0
    region[inside] = blend[inside]
    return Image.fromarray(out)


class FaceANetPipeline(DiffusionPipeline):
    """G_id (an SD-inpainting model) with a tuned identity, composing any context model.

    Args:
        vae, text_encoder, tokenizer, unet, scheduler: the SD-inpainting model (9-channel UNet).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.feats: FeatEmbeddings | None = None
        self.identity: dict[str, Any] = {}

    # ---- loading ------------------------------------------------------------------------
    @classmethod
    def from_identity(cls, identity: str | Path, base: str | None = None, **kwargs):
        """The base inpainting model of a tuned identity, with its LoRA and vectors loaded."""
        from .faceanet_parts import read_identity_meta

        meta = read_identity_meta(identity)
        pipe = cls(**load_inpaint_components(base or meta["base"]))
        pipe.load_identity(identity)
        return pipe

    def load_identity(self, path: str | Path) -> None:
        """Add the tuned LoRA (adapter ``faceanet``) and the ``[feat]`` vectors."""
        feats, meta = load_identity(path, self.unet, ADAPTER)
        self.set_identity(feats, meta)

    def set_identity(self, feats: FeatEmbeddings | None, meta: dict[str, Any]) -> None:
        self.feats, self.identity = feats, dict(meta)

    # ---- inputs -------------------------------------------------------------------------
    def check_inputs(self, prompt, context_image, context_pipeline, guidance_scale, steps):
        if not self.identity:
            raise InputError("identity: load a tuned identity first (load_identity)")
        check_prompt(prompt, name="prompt")
        if context_image is None and context_pipeline is None:
            raise InputError("context: give context_image or a context_pipeline (G_c)")
        if guidance_scale < 1.0:
            raise InputError(f"guidance_scale: must be >= 1, got {guidance_scale}")
        if steps < 1:
            raise InputError(f"num_inference_steps: at least 1, got {steps}")

    def split(self, prompt: str, context_prompt: str | None, id_prompt: str | None):
        """(T_context, T_id): the rule-based split, with either part overridden."""
        t_c, t_id = split_prompt(prompt, self.identity.get("noun", "person"))
        return (context_prompt if context_prompt is not None else t_c), (
            id_prompt if id_prompt is not None else t_id
        )

    def find_face(
        self, image: Image.Image, face_index: int | None, retry: bool = True
    ) -> np.ndarray | None:
        """68 landmarks of the chosen face, or None (after a lower-threshold retry)."""
        from ..faces.detect import detect

        det = detect(image, select="all", landmarks=68, raise_if_none=False)
        if len(det) == 0 and retry:
            det = detect(
                image, select="all", landmarks=68, raise_if_none=False, threshold=0.0, upsample=2
            )
        if len(det) == 0:
            return None
        if face_index is None:
            area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
            idx = int(torch.argmax(area))
        else:
            if not 0 <= face_index < len(det):
                raise InputError(
                    f"face_index: {face_index} but {len(det)} face(s) found (0 is the leftmost)"
                )
            idx = face_index
        return det.landmarks68[idx].numpy()

    # ---- the inpainting model -----------------------------------------------------------
    def conditioning(self, id_prompt: str, trim_padding: bool = False):
        """(cond, uncond, segments) of ``E(T'_id)`` on this pipeline's device."""
        cond, uncond, segments = identity_conditioning(
            self.text_encoder,
            self.tokenizer,
            self.feats,
            id_prompt,
            self.identity["gender"],
            trim_padding=trim_padding,
        )
        return cond, uncond, segments

    @torch.no_grad()
    def inpaint(
        self,
        image: Image.Image,
        mask: torch.Tensor,
        id_prompt: str,
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        trim_padding: bool = False,
    ) -> Image.Image:
        """Repaint ``mask`` (1 = repaint, ``(1, H, W)``) of a G_id-sized ``image``."""
        device, dtype = self.unet.device, self.unet.dtype
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        x = x.permute(2, 0, 1).unsqueeze(0).to(device, self.vae.dtype)
        m = mask.reshape(1, 1, *mask.shape[-2:]).to(device, self.vae.dtype)
        masked = to_diffusion_latents(self.vae, encode_raw(self.vae, masked_image(x, m)))
        cond, uncond, _ = self.conditioning(id_prompt, trim_padding)
        use_cfg = guidance_scale > 1.0
        text = torch.cat([uncond, cond]) if use_cfg else cond
        text = text.to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (1, self.unet.config.out_channels, *masked.shape[-2:])
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        k = 2 if use_cfg else 1
        mask_in, masked_in = m.repeat(k, 1, 1, 1), masked.repeat(k, 1, 1, 1)
        for t in self.progress_bar(self.scheduler.timesteps):
            lat = self.scheduler.scale_model_input(torch.cat([latents] * k), t)
            eps = self.unet(
                inpaint_unet_input(lat, mask_in, masked_in), t, encoder_hidden_states=text
            ).sample
            if use_cfg:
                e_u, e_c = eps.chunk(2)
                eps = e_u + guidance_scale * (e_c - e_u)
            latents = self.scheduler.step(eps, t, latents, generator=generator).prev_sample
        out = decode_latents(self.vae, latents)
        arr = ((out[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0)
        return Image.fromarray(arr.cpu().numpy())

    # ---- the whole method ---------------------------------------------------------------
    def __call__(
        self,
        prompt: str,
        *,
        context_image: Any = None,
        context_pipeline: Any = None,
        context_prompt: str | None = None,
        id_prompt: str | None = None,
        face_index: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: torch.Generator | None = None,
        context_kwargs: dict[str, Any] | None = None,
        front_face: bool = True,
        trim_padding: bool = False,
        feather: float = 0.02,
        landmarks68: np.ndarray | None = None,
    ) -> FaceANetPipelineOutput:
        """Generate one image of the tuned identity for ``prompt``.

        Args:
            prompt: the user prompt T.
            context_image: repaint the face of this photo instead of generating a context.
            context_pipeline: G_c, a text-to-image pipeline (e.g. ``StableDiffusionXLPipeline``)
                called as ``context_pipeline(prompt=T_c, generator=..., **context_kwargs)``.
            context_prompt / id_prompt: override either half of the split.
            face_index: which face to repaint (left to right from 0); default the largest.
            num_inference_steps / guidance_scale: G_id's sampler steps and CFG scale on T'_id.
            generator: the noise of both models.
            front_face: append "front face" to T_context (the paper's pose cue).
            trim_padding: keep only BOS..EOS(+feat slots) of each conditioning segment.
            feather: paste-mask Gaussian sigma as a fraction of the crop side (2%).
            landmarks68: skip detection and use these landmarks of ``context_image``.
        """
        self.check_inputs(
            prompt, context_image, context_pipeline, guidance_scale, num_inference_steps
        )
        t_c, t_id = self.split(prompt, context_prompt, id_prompt)
        timings = {"context": 0.0, "detection": 0.0, "inpainting": 0.0}
        start = time.perf_counter()
        if context_image is not None:
            x = load_image(context_image, name="context_image")
        else:
            text = f"{t_c}, front face" if front_face and t_c else (t_c or "front face")
            x = context_pipeline(prompt=text, generator=generator, **(context_kwargs or {}))
            x = x.images[0]
        timings["context"] = time.perf_counter() - start
        start = time.perf_counter()
        lm = landmarks68 if landmarks68 is not None else self.find_face(x, face_index)
        timings["detection"] = time.perf_counter() - start
        if lm is None:
            warnings.warn(
                "FaceA-Net: no face found in the context image (also at a lower threshold); "
                "returning the context image unchanged",
                NoFaceWarning,
                stacklevel=2,
            )
            return FaceANetPipelineOutput(
                images=[x.copy()],
                context_images=[x],
                paste_masks=[None],
                prompts=[(t_c, t_id)],
                faces_found=[False],
                timings=timings,
            )
        start = time.perf_counter()
        meta = self.identity
        face = part_boxes(lm, 0.0)["face"]
        left, top, side = square_around(face, 1.0 / meta["face_ratio"], x.size)
        res = int(meta["resolution"])
        crop = x.crop((left, top, left + side, top + side))
        box = part_boxes(lm, meta.get("mask_dilate", 0.05))["face"]
        k = res / side
        box_crop = (box - np.array([left, top, left, top])) * k
        repainted = self.inpaint(
            crop.resize((res, res), Image.Resampling.LANCZOS),
            box_mask(box_crop, (res, res)),
            t_id,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            trim_padding=trim_padding,
        ).resize((side, side), Image.Resampling.LANCZOS)
        box_local = box - np.array([left, top, left, top])
        alpha = feathered_paste_mask(box_mask(box_local, (side, side)), feather * side).numpy()
        result = paste(x, repainted, alpha, left, top)
        full = np.zeros((x.height, x.width), dtype=np.float32)
        full[top : top + side, left : left + side] = alpha
        timings["inpainting"] = time.perf_counter() - start
        return FaceANetPipelineOutput(
            images=[result],
            context_images=[x],
            paste_masks=[full],
            prompts=[(t_c, t_id)],
            faces_found=[True],
            timings=timings,
        )


def write_tiny_inpaint(directory: Path, *, seed: int = 0) -> None:
    """``init-tiny --kind inpaint``: a tiny SD-inpainting model (9-channel UNet) folder,
    loadable as ``--base`` of ``train faceanet`` (vae/, text_encoder/, tokenizer/, unet/,
    scheduler/ in diffusers' layout)."""
    FaceANetPipeline(**load_inpaint_components("tiny", seed)).save_pretrained(directory)
