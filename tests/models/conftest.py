"""Model folders and files in the real layouts, tiny: configs as published, safetensors
headers with the real key names and, where a check reads them, the real shapes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def sd_pipeline(folder: Path, cls: str, in_channels: int, *, sdxl: bool = False) -> Path:
    """A pipeline folder's configs: ``model_index.json`` and ``unet/config.json`` as the
    published SD1.5 / InstructPix2Pix / inpainting / SDXL repos have them."""
    index = {
        "_class_name": cls,
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    unet = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": in_channels,
        "out_channels": 4,
        "cross_attention_dim": 2048 if sdxl else 768,
        "block_out_channels": [320, 640, 1280] if sdxl else [320, 640, 1280, 1280],
    }
    if sdxl:
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        unet["addition_embed_type"] = "text_time"
    write_json(folder / "model_index.json", index)
    write_json(folder / "unet" / "config.json", unet)
    return folder


def save_header(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A safetensors file with these names and shapes (fp16 zeros)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
    return path


def faceid_plus_v2_keys(cross: int = 2048, layers: int = 70) -> dict[str, tuple[int, ...]]:
    """IP-Adapter FaceID-Plus-v2's key names (ProjModelFaceIdPlus + per-layer k/v IP
    projections); SDXL's cross-attention width is 2048, SD1.5's 768."""
    keys = {  # shapes the check does not read are tiny
        "image_proj.proj.0.weight": (1, 1),
        "image_proj.proj.2.weight": (1, 1),
        "image_proj.norm.weight": (1,),
        "image_proj.perceiver_resampler.proj_in.weight": (1, 1),
        "image_proj.perceiver_resampler.layers.0.0.to_q.weight": (1, 1),
    }
    for i in range(1, 2 * layers, 2):
        keys[f"ip_adapter.{i}.to_k_ip.weight"] = (1, cross)
        keys[f"ip_adapter.{i}.to_v_ip.weight"] = (1, cross)
    return keys


def save_pickle(path: Path, state: dict) -> Path:
    torch.save(state, str(path))
    assert zipfile.is_zipfile(path)
    return path


@pytest.fixture(scope="session")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """name -> a tiny folder or file in that real layout."""
    root = tmp_path_factory.mktemp("layouts")
    out = {
        "sd15": sd_pipeline(root / "sd15", "StableDiffusionPipeline", 4),
        "ip2p": sd_pipeline(root / "ip2p", "StableDiffusionInstructPix2PixPipeline", 8),
        "inpaint": sd_pipeline(root / "inpaint", "StableDiffusionInpaintPipeline", 9),
        "sdxl": sd_pipeline(root / "sdxl", "StableDiffusionXLPipeline", 4, sdxl=True),
    }
    write_json(root / "kontext" / "model_index.json", {"_class_name": "FluxKontextPipeline"})
    out["kontext"] = root / "kontext"
    write_json(root / "controlnet" / "config.json", {"_class_name": "ControlNetModel"})
    out["controlnet"] = root / "controlnet"
    write_json(
        root / "clip-vision" / "config.json",
        {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model"},
    )
    out["clip-vision"] = root / "clip-vision"
    # original (LDM) single files: input_blocks.0.0 is the UNet's conv_in, (320, C, 3, 3)
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    out["ip2p.safetensors"] = save_header(
        root / "instruct-pix2pix-00-22000.safetensors",
        {conv_in: (320, 8, 3, 3), "model_ema.diffusion_modelinput_blocks00weight": (1,)},
    )
    out["sd15.safetensors"] = save_header(
        root / "v1-5-pruned-emaonly.safetensors", {conv_in: (320, 4, 3, 3)}
    )
    out["sdxl.safetensors"] = save_header(
        root / "sd_xl_base_1.0.safetensors",
        {conv_in: (320, 4, 3, 3), "conditioner.embedders.1.model.ln_final.weight": (1280,)},
    )
    out["faceid-plus-v2-sdxl.safetensors"] = save_header(
        root / "ip-adapter-faceid-plusv2_sdxl.safetensors", faceid_plus_v2_keys()
    )
    sd15_keys = faceid_plus_v2_keys(768, 16)
    nested = {
        group: {
            k.split(".", 1)[1]: torch.zeros(shape, dtype=torch.float16)
            for k, shape in sd15_keys.items()
            if k.startswith(group + ".")
        }
        for group in ("image_proj", "ip_adapter")
    }
    out["faceid-plus-v2-sd15.bin"] = save_pickle(root / "ip-adapter-faceid-plusv2_sd15.bin", nested)
    out["ip-adapter-sdxl.safetensors"] = save_header(
        root / "ip-adapter_sdxl.safetensors",
        {"image_proj.proj.weight": (8192, 1280), "ip_adapter.1.to_k_ip.weight": (1, 2048)},
    )
    out["arcface.onnx"] = root / "w600k_r50.onnx"
    out["arcface.onnx"].write_bytes(b"\x08\x07")  # identified by format, never parsed
    out["codeformer.pth"] = save_pickle(
        root / "codeformer.pth",
        {"params_ema": {"quantize.embedding.weight": torch.zeros(1024, 1)}},
    )
    out["bisenet.pth"] = save_pickle(
        root / "79999_iter.pth",
        {
            "cp.resnet.conv1.weight": torch.zeros(1, 3, 1, 1),
            "conv_out.conv_out.weight": torch.zeros(19, 1, 1, 1),
        },
    )
    out["lightning-unet.safetensors"] = save_header(
        root / "sdxl_lightning_4step_unet.safetensors",
        {
            "conv_in.weight": (320, 4, 3, 3),
            "down_blocks.0.resnets.0.conv1.weight": (1,),
            "add_embedding.linear_1.weight": (1, 2816),
        },
    )
    out["hyper-lora.safetensors"] = save_header(
        root / "Hyper-SDXL-4steps-lora.safetensors",
        {"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": (8, 640)},
    )
    out["unknown.safetensors"] = save_header(root / "other.safetensors", {"w": (2, 2)})
    out["notes.txt"] = root / "notes.txt"
    out["notes.txt"].write_text("hello")
    return out
