"""DINOv2 (Oquab et al. 2023) features of face crops, for IPNet's face-style triplet loss.

A thin, differentiable wrapper around ``transformers.Dinov2Model``: ``[0, 1]`` crops are
resized to the model's input size (224 by default, DINOv2's processor crop), normalised with
the ImageNet mean and standard deviation, and mapped to the CLS token after the final layer
norm (``pooler_output``), the mean of the patch tokens, or both concatenated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelNotFoundError

__all__ = ["DinoFeatureExtractor", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("cls", "mean", "cls+mean")


class DinoFeatureExtractor(nn.Module):
    """DINOv2 image features of ``[0, 1]`` crops; gradients flow to the crops.

    Args:
        model: a ``transformers.Dinov2Model``.
        image_size: the side crops are resized to (default: the model config's
            ``image_size`` rounded down to a multiple of the patch size).
        pooling: ``"cls"`` (default; the layer-normed CLS token), ``"mean"`` (mean of the
            layer-normed patch tokens) or ``"cls+mean"`` (both, concatenated).
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int | None = None,
        pooling: Literal["cls", "mean", "cls+mean"] = "cls",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise InputError(f"pooling: one of {', '.join(POOLINGS)}; got {pooling!r}")
        self.model = model
        cfg = model.config
        if image_size is None:
            image_size = int(cfg.image_size) // int(cfg.patch_size) * int(cfg.patch_size)
        self.image_size = int(image_size)
        self.pooling = pooling
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @property
    def feature_dim(self) -> int:
        """The size of the returned features."""
        d = int(self.model.config.hidden_size)
        return 2 * d if self.pooling == "cls+mean" else d

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` crops in ``[0, 1]`` -> ``(B, feature_dim)`` features."""
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"crops: expected (B, 3, H, W), got {tuple(crops.shape)}")
        dtype = next(self.model.parameters()).dtype
        x = crops.to(dtype)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        x = (x - self.mean.to(dtype)) / self.std.to(dtype)
        out = self.model(pixel_values=x)
        cls = out.pooler_output
        if self.pooling == "cls":
            return cls
        mean = out.last_hidden_state[:, 1:].mean(dim=1)
        return mean if self.pooling == "mean" else torch.cat([cls, mean], dim=-1)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        *,
        image_size: int | None = None,
        pooling: Literal["cls", "mean", "cls+mean"] = "cls",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> DinoFeatureExtractor:
        """Load a DINOv2 model (local folder or Hub id, safetensors), frozen and in eval mode.

        Args:
            path_or_hub_id: e.g. a folder saved from ``facebook/dinov2-base``, or that id
                (read from the local Hub cache; downloads only if the Hub is reachable and
                ``HF_HUB_OFFLINE`` is unset).
            image_size: the input side (default: the folder's ``preprocessor_config.json``
                crop size, else 224).
            pooling: see the class.
            device, dtype: where and how the weights live (default CPU, float32).
            **kwargs: passed to ``Dinov2Model.from_pretrained``.
        """
        from transformers import Dinov2Model

        try:
            model = Dinov2Model.from_pretrained(str(path_or_hub_id), use_safetensors=True, **kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelNotFoundError(
                f"{path_or_hub_id}: DINOv2 model not found (a folder with config.json and "
                f"model.safetensors, or a cached Hub id such as facebook/dinov2-base; "
                f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {first}"
            ) from None
        if image_size is None:
            image_size = _processor_crop_size(path_or_hub_id) or 224
        extractor = cls(model, image_size=image_size, pooling=pooling)
        extractor.eval().requires_grad_(False)
        return extractor.to(device=device, dtype=dtype)

    @classmethod
    def from_config(
        cls,
        config: Any = None,
        *,
        image_size: int | None = None,
        pooling: Literal["cls", "mean", "cls+mean"] = "cls",
        seed: int | None = 0,
        **overrides: Any,
    ) -> DinoFeatureExtractor:
        """A randomly initialised DINOv2 from a config (default: a tiny one for tests).

        Args:
            config: a ``Dinov2Config``, a dict of its fields, or ``None`` for a tiny model
                (hidden size 32, one layer, two heads, 32 px input, 8 px patches).
            image_size, pooling: see the class.
            seed: seeds the random weights (``None``: the global RNG).
            **overrides: config fields that replace the defaults.
        """
        from transformers import Dinov2Config, Dinov2Model

        if config is None:
            fields = dict(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                mlp_ratio=2,
                image_size=32,
                patch_size=8,
            )
            fields.update(overrides)
            config = Dinov2Config(**fields)
        elif isinstance(config, dict):
            config = Dinov2Config(**{**config, **overrides})
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = Dinov2Model(config)
        else:
            model = Dinov2Model(config)
        return cls(model.eval(), image_size=image_size, pooling=pooling)


def _processor_crop_size(path: str | os.PathLike) -> int | None:
    cfg = Path(path) / "preprocessor_config.json"
    if not cfg.is_file():
        return None
    try:
        crop = json.loads(cfg.read_text()).get("crop_size")
    except (OSError, ValueError):
        return None
    if isinstance(crop, dict):
        crop = crop.get("height")
    return int(crop) if isinstance(crop, (int, float)) else None
