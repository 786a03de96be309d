"""Tiny random bundles for SDXL-based identity methods (``init-tiny --kind``).

Each writer fills a folder that the real loading path reads as it reads the released
weights, so every command runs offline; their outputs are noise.

* ``sdxl``: an SDXL pipeline folder (two text encoders, UNet with ``text_time`` conditioning,
  VAE, SDXL's Euler scheduler), widths 32-64.
* ``sdxl-distilled``: the few-step families' weights for that SDXL, laid out like their Hub
  repos: Hyper-SD's and LCM's LoRA files, SDXL-Lightning's UNet file, SDXL-Turbo's ``unet/``
  and ``scheduler/``.
* ``faceid-plus-v2``: IP-Adapter FaceID-Plus-v2 for that SDXL, in the released format (a
  ``.bin`` pickle of plain tensors with ``image_proj`` and ``ip_adapter``, LoRA included).
* ``arcface``: an ArcFace-shaped embedder (insightface iresnet layout at small widths,
  112 px crops -> 512-d), as an arcface_torch safetensors state dict.
* ``clip-vision``: a CLIP vision model with projection and its image processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..components import TINY_VAE_CONFIG, _seeded, clip_tokenizer

__all__ = [
    "TINY_CLIP_VISION_CONFIG",
    "TINY_SDXL_TEXT_CONFIG",
    "TINY_SDXL_UNET_CONFIG",
    "build_tiny_sdxl",
    "faceid_plus_v2_state_dict",
    "write_tiny_arcface",
    "write_tiny_clip_vision",
    "write_tiny_faceid_plus_v2",
    "write_tiny_sdxl",
    "write_tiny_sdxl_distilled",
]

#: SDXL's UNet layout at tiny size: cross-attention in a down and an up block (and mid).
TINY_SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "transformer_layers_per_block": (1, 1),
    "attention_head_dim": (2, 4),
    "cross_attention_dim": 64,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,  # 6 x 8 time ids + 32 pooled
    "norm_num_groups": 32,
}

TINY_SDXL_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 32,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

#: SDXL base's scheduler config (stabilityai/stable-diffusion-xl-base-1.0 scheduler/).
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}

TINY_CLIP_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
    "hidden_act": "gelu",
}

#: FaceID-Plus-v2 projection at tiny size: resampler width = the UNet's cross-attention dim.
_ADAPTER_DIM = TINY_SDXL_UNET_CONFIG["cross_attention_dim"]
_ADAPTER_RANK = 4


def build_tiny_sdxl(seed: int = 0) -> dict[str, Any]:
    """The components of a tiny SDXL pipeline (random weights)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with _seeded(seed):
        unet = UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG).eval()
        vae = AutoencoderKL(**{**TINY_VAE_CONFIG, "scaling_factor": 0.13025}).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_SDXL_TEXT_CONFIG)).eval()
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT_CONFIG)).eval()
    tokenizer = clip_tokenizer()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "unet": unet,
        "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    }


def write_tiny_sdxl(directory: Path, *, seed: int = 0) -> None:
    """``init-tiny --kind sdxl``: a tiny SDXL pipeline folder (``from_pretrained``-able)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl(seed), add_watermarker=False)
    pipe.save_pretrained(directory, safe_serialization=True)


def _attention_linears(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The q/k/v/out projections of every attention layer of ``unet``, by module name."""
    from diffusers.models.attention_processor import Attention

    found: dict[str, torch.nn.Linear] = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                found[f"{name}.{proj}"] = module.get_submodule(proj)
    return found


def write_tiny_sdxl_distilled(directory: Path, *, seed: int = 0) -> None:
    """``init-tiny --kind sdxl-distilled``: each few-step family's weights for the tiny SDXL.

    Files as in the families' Hub repos: ``Hyper-SDXL-4steps-lora.safetensors`` (Hyper-SD),
    ``pytorch_lora_weights.safetensors`` (LCM-LoRA), ``sdxl_lightning_4step_unet.safetensors``
    (SDXL-Lightning) and ``unet/`` + ``scheduler/`` (SDXL-Turbo). Pass the folder as
    ``generate --distilled``.
    """
    from diffusers import EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from safetensors.torch import save_file

    with _seeded(seed + 1):
        unet = UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG).eval()
        for name in ("Hyper-SDXL-4steps-lora.safetensors", "pytorch_lora_weights.safetensors"):
            lora = {}
            for module, linear in _attention_linears(unet).items():
                out_f, in_f = linear.weight.shape
                lora[f"unet.{module}.lora_A.weight"] = torch.randn(_ADAPTER_RANK, in_f) * 0.05
                lora[f"unet.{module}.lora_B.weight"] = torch.randn(out_f, _ADAPTER_RANK) * 0.05
            save_file(lora, str(directory / name))
        save_file(
            {k: v.contiguous() for k, v in unet.state_dict().items()},
            str(directory / "sdxl_lightning_4step_unet.safetensors"),
        )
        turbo = UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG).eval()
    turbo.save_pretrained(directory / "unet", safe_serialization=True)
    turbo_scheduler = {
        k: v
        for k, v in SDXL_SCHEDULER_CONFIG.items()
        if k not in ("interpolation_type", "use_karras_sigmas")
    }
    EulerAncestralDiscreteScheduler(
        **{**turbo_scheduler, "timestep_spacing": "trailing"}
    ).save_pretrained(directory / "scheduler")


def _faceid_plus_projection(clip_dim: int, dim: int, id_dim: int = 512) -> dict[str, torch.Tensor]:
    """IP-Adapter's ``ProjPlusModel`` state dict (original key names), random weights.

    ``proj`` (ArcFace -> 4 tokens), ``norm``, and a 4-layer ``perceiver_resampler`` whose
    width is ``dim`` (= the UNet's cross-attention dim), 64-d heads, over CLIP states of
    width ``clip_dim``.
    """
    inner, tokens = max(1, dim // 64) * 64, 4

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape) * shape[-1] ** -0.5

    sd: dict[str, torch.Tensor] = {
        "proj.0.weight": w(id_dim * 2, id_dim),
        "proj.0.bias": torch.zeros(id_dim * 2),
        "proj.2.weight": w(dim * tokens, id_dim * 2),
        "proj.2.bias": torch.zeros(dim * tokens),
        "norm.weight": torch.ones(dim),
        "norm.bias": torch.zeros(dim),
        "perceiver_resampler.proj_in.weight": w(dim, clip_dim),
        "perceiver_resampler.proj_in.bias": torch.zeros(dim),
        "perceiver_resampler.proj_out.weight": w(dim, dim),
        "perceiver_resampler.proj_out.bias": torch.zeros(dim),
        "perceiver_resampler.norm_out.weight": torch.ones(dim),
        "perceiver_resampler.norm_out.bias": torch.zeros(dim),
    }
    for i in range(4):
        p = f"perceiver_resampler.layers.{i}"
        sd.update(
            {
                f"{p}.0.norm1.weight": torch.ones(dim),
                f"{p}.0.norm1.bias": torch.zeros(dim),
                f"{p}.0.norm2.weight": torch.ones(dim),
                f"{p}.0.norm2.bias": torch.zeros(dim),
                f"{p}.0.to_q.weight": w(inner, dim),
                f"{p}.0.to_kv.weight": w(inner * 2, dim),
                f"{p}.0.to_out.weight": w(dim, inner),
                f"{p}.1.0.weight": torch.ones(dim),
                f"{p}.1.0.bias": torch.zeros(dim),
                f"{p}.1.1.weight": w(dim * 4, dim),
                f"{p}.1.3.weight": w(dim, dim * 4),
            }
        )
    return sd


def faceid_plus_v2_state_dict(
    unet: torch.nn.Module, clip_dim: int, *, lora_rank: int | None = _ADAPTER_RANK
) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter FaceID-Plus-v2 checkpoint for ``unet``, in the released layout.

    ``image_proj``: the Plus projection (resampler width = the UNet's cross-attention dim)
    over CLIP states of width ``clip_dim``; ``ip_adapter``: ``to_k_ip``/``to_v_ip`` of each
    cross-attention and (unless ``lora_rank`` is ``None``) the LoRA of every attention,
    numbered as diffusers enumerates the UNet's processors. Uses the global RNG.
    """
    cross = unet.config.cross_attention_dim
    image_proj = _faceid_plus_projection(clip_dim, cross)
    ip_adapter: dict[str, torch.Tensor] = {}
    for key_id, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attn.to_q.in_features
        context = attn.to_k.in_features
        if name.endswith("attn2.processor"):
            ip_adapter[f"{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) * cross**-0.5
            ip_adapter[f"{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) * cross**-0.5
        if lora_rank is None:
            continue
        for proj, fan_in in (("q", hidden), ("k", context), ("v", context), ("out", hidden)):
            down, up = f"{key_id}.to_{proj}_lora.down.weight", f"{key_id}.to_{proj}_lora.up.weight"
            ip_adapter[down] = torch.randn(lora_rank, fan_in) * 0.05
            ip_adapter[up] = torch.randn(hidden, lora_rank) * 0.05
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def write_tiny_faceid_plus_v2(directory: Path, *, seed: int = 0) -> None:
    """``init-tiny --kind faceid-plus-v2``: IP-Adapter FaceID-Plus-v2 for the tiny SDXL.

    Written as the release is: ``ip-adapter-faceid-plusv2_sdxl.bin``, a pickle of plain
    tensors (see :func:`faceid_plus_v2_state_dict`; CLIP width of ``clip-vision``), so the
    conversion to safetensors and ``load_ip_adapter`` run as for the real file.
    """
    from diffusers import UNet2DConditionModel

    with _seeded(seed + 2):
        unet = UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG)
        state = faceid_plus_v2_state_dict(unet, TINY_CLIP_VISION_CONFIG["hidden_size"])
    torch.save(state, directory / "ip-adapter-faceid-plusv2_sdxl.bin")


def write_tiny_arcface(directory: Path, *, seed: int = 0) -> None:
    """``init-tiny --kind arcface``: ``arcface.safetensors``, an insightface iresnet (blocks
    1-1-1-1, widths 8-8-16-16) mapping 112 px ArcFace crops to 512-d; loads with
    ``ArcFaceEmbedder.from_weights`` / ``generate --face-model``."""
    from safetensors.torch import save_file

    from ..faces.arcface import IResNet

    with _seeded(seed + 3):
        net = IResNet((1, 1, 1, 1), num_features=512, widths=(8, 8, 16, 16)).eval()
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(directory / "arcface.safetensors"),
    )


def write_tiny_clip_vision(directory: Path, *, seed: int = 0) -> None:
    """``init-tiny --kind clip-vision``: a CLIP vision model with projection (32 px input,
    width 32) and its ``CLIPImageProcessor``, a ``from_pretrained`` folder."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with _seeded(seed + 4):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION_CONFIG)).eval()
    model.save_pretrained(directory, safe_serialization=True)
    size = TINY_CLIP_VISION_CONFIG["image_size"]
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(directory)
