"""Tiny random-weight bundles, one per model family the toolkit loads (``init-tiny --kind``).

Each kind is a writer ``write(directory: Path, *, seed: int = 0, **options) -> None`` that fills
an empty folder with a bundle that the matching loading path reads exactly as it reads real
weights (a diffusers folder, a LoRA file, an adapter checkpoint...). Writers live beside the
code that loads what they write and are imported only when their kind is asked for, so adding a
kind is one line in :data:`TINY_KINDS`. Their outputs are noise: they exercise the code, not a
model.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError
from .writer import atomic_directory

#: kind -> ("module:function", one-line description). The first entry is the default kind.
TINY_KINDS: dict[str, tuple[str, str]] = {
    "edit": (
        "instantportrait.components:write_tiny_edit",
        "InstantPortrait editor (IDE-Net/IPNet pipeline folder) for `edit --model`",
    ),
    "dataset": (
        "instantportrait.data.models:write_tiny_dataset",
        "SDXL + canny ControlNet + IP-Adapter bundle for `data generate --models`",
    ),
    "fpga": (
        "instantportrait.pipelines.fpga:write_tiny_fpga",
        "FPGA pipeline (tiny SD1.5 + ID-ControlNet + resampler) for `generate --method fpga`",
    ),
    "sdxl": (
        "instantportrait.pipelines.fastface_tiny:write_tiny_sdxl",
        "SDXL pipeline folder (base for `generate --model PATH` / `--base`)",
    ),
    "sdxl-distilled": (
        "instantportrait.pipelines.fastface_tiny:write_tiny_sdxl_distilled",
        "few-step SDXL weights (Hyper/LCM LoRA, Lightning UNet, Turbo unet/) for `--distilled`",
    ),
    "faceid-plus-v2": (
        "instantportrait.pipelines.fastface_tiny:write_tiny_faceid_plus_v2",
        "IP-Adapter FaceID-Plus-v2 for the tiny SDXL (.bin, as released) for `--ip-adapter`",
    ),
    "arcface": (
        "instantportrait.pipelines.fastface_tiny:write_tiny_arcface",
        "ArcFace-shaped 512-d face embedder (iresnet safetensors) for `--face-model`",
    ),
    "clip-vision": (
        "instantportrait.pipelines.fastface_tiny:write_tiny_clip_vision",
        "CLIP vision encoder with its image processor for `--image-encoder`",
    ),
    "inpaint": (
        "instantportrait.pipelines.faceanet:write_tiny_inpaint",
        "SD-inpainting model (9-channel UNet) for `train faceanet --base`",
    ),
    "restore": (
        "instantportrait.pipelines.restore:write_tiny_restore",
        "DIIR face restorer (SD1.5-architecture + landmark ControlNet) for `restore --model`",
    ),
    "repcontrolnet": (
        "instantportrait.pipelines.rep_controlnet:write_tiny_repcontrolnet",
        "merged RepControlNet with FPGA's identity encoder for `generate --method fpga --model`",
    ),
    "face-parser": (
        "instantportrait.faces.parsing:write_tiny_face_parser",
        "BiSeNet face parser (face-parsing.PyTorch layout) for `restore --face-parser`",
    ),
    "kontext": (
        "instantportrait.backbones.kontext_components:write_tiny_kontext",
        "FLUX.1 Kontext pipeline folder (1+1 blocks, tiny CLIP/T5, 16-ch VAE) for `edit --model`",
    ),
    "qwen-edit": (
        "instantportrait.backbones.qwen_edit_components:write_tiny_qwen_edit",
        "Qwen-Image-Edit pipeline folder (1 block, tiny Qwen2.5-VL, 16-ch VAE) for `edit --model`",
    ),
    "qwen-edit-plus": (
        "instantportrait.backbones.qwen_edit_components:write_tiny_qwen_edit_plus",
        "Qwen-Image-Edit-2509 (QwenImageEditPlusPipeline) folder, the qwen-edit parts, for `edit`",
    ),
    "codeformer": (
        "instantportrait.models.codeformer:write_tiny_codeformer",
        "CodeFormer face enhancer (32 px, 64 codes) for `restore --codeformer`",
    ),
}

DEFAULT_KIND = next(iter(TINY_KINDS))


def tiny_writer(kind: str) -> Callable[..., None]:
    """The writer function of ``kind``; an unknown kind is one clear line."""
    if kind not in TINY_KINDS:
        raise InputError(f"--kind: unknown kind {kind!r}; one of {', '.join(TINY_KINDS)}")
    target, _ = TINY_KINDS[kind]
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def write_tiny(
    directory: str | os.PathLike,
    kind: str = DEFAULT_KIND,
    *,
    seed: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Write the tiny bundle of ``kind`` into ``directory`` atomically; returns the folder."""
    writer = tiny_writer(kind)
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        writer(tmp, seed=seed, **options)
    return Path(directory)
