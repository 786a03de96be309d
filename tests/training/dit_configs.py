"""The tiny IDE-Net / IPNet configs the DiT training tests build (FLUX.1 Kontext and
Qwen-Image-Edit alike): one step, fp32, no EMA, no dropout, 64² pairs without detection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instantportrait.training.config import from_dict
from instantportrait.training.idenet import IDENetConfig
from instantportrait.training.ipnet import IPNetConfig

RUN = {
    "max_steps": 1,
    "tensorboard": False,
    "num_workers": 0,
    "mixed_precision": "no",
    "ema": False,
}
DATA = {
    "resolution": 64,
    "detect_faces": False,
    "dropout_text": 0.0,
    "dropout_image": 0.0,
    "dropout_both": 0.0,
}
OPTIM = {"lr": 1e-3, "warmup_steps": 0}


def idenet_config(
    backbone: str, pretrained: Path, pair_dir: Path, out: Path, model: dict, **training: Any
) -> IDENetConfig:
    """IDE-Net on ``backbone`` (rank-4 LoRA plus ``model``), ``training`` over :data:`RUN`."""
    return from_dict(
        IDENetConfig,
        {
            "model": {"backbone": backbone, "pretrained": str(pretrained), "lora_rank": 4, **model},
            "data": {"path": str(pair_dir), **DATA},
            "optim": OPTIM,
            "training": {**RUN, "output_dir": str(out), **training},
        },
    )


def ipnet_config(
    teacher_dir: Path, pair_dir: Path, out: Path, stage: dict, **training: Any
) -> IPNetConfig:
    """One IPNet ``stage`` (name "test", with the triplet) from a DiT IDE-Net export, with the
    tiny discriminator and DINO."""
    return from_dict(
        IPNetConfig,
        {
            "teacher": {"path": str(teacher_dir)},
            "stage": {"name": "test", "lambda_triplet": 1.0, **stage},
            "discriminator": {"backbone": "tiny"},
            "triplet": {"dino": "tiny"},
            "data": {"path": str(pair_dir), **DATA},
            "optim": OPTIM,
            "training": {**RUN, "output_dir": str(out), **training},
        },
    )
