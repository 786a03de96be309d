"""FaceA-Net's context model G_c: any SDXL text-to-image pipeline (diffusers), or a tiny one.

``load_context_pipeline(spec)``: ``tiny`` builds a tiny random SDXL (tests: it draws noise, no
face, which exercises the no-face path); a folder or Hub id loads with
``StableDiffusionXLPipeline.from_pretrained``. Distilled 4-step SDXL checkpoints (Hyper,
Lightning, Turbo, LCM) are SDXL folders too: pass their folder; the context then costs 4
steps (give ``--context-steps 4 --context-guidance-scale 1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotFoundError

TINY_SDXL_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 1),
    "projection_class_embeddings_input_dim": 80,  # 6 x 8 time ids + 32 pooled text
    "cross_attention_dim": 64,  # 32 + 32 from the two text encoders
    "norm_num_groups": 32,
}


def tiny_sdxl_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusionXLPipeline`` (two 32-wide text encoders, 2-block UNet)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..components import TINY_TEXT_CONFIG, TINY_VAE_CONFIG, _seeded, clip_tokenizer

    with _seeded(seed):
        unet = UNet2DConditionModel(**TINY_SDXL_UNET)
        vae = AutoencoderKL(**{**TINY_VAE_CONFIG, "scaling_factor": 0.13025})
        te1 = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_CONFIG))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    tok = clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=te1.eval(),
        text_encoder_2=te2.eval(),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet.eval(),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_context_pipeline(
    spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
):
    """G_c from ``spec``: ``tiny``, or an SDXL folder / Hub id (loaded on ``device``)."""
    if spec == "tiny":
        return tiny_sdxl_pipeline().to(device)
    from diffusers import StableDiffusionXLPipeline

    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(spec, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        hint = "no such folder" if not Path(spec).exists() else str(exc)
        raise ModelNotFoundError(
            f"--context-model {spec}: could not load an SDXL pipeline ({hint}); pass an SDXL "
            "diffusers folder or Hub id, `tiny` for a test model, or --context-image PHOTO"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
