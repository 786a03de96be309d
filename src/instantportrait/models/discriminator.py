"""IPNet's unconditional discriminator: trainable heads on a frozen DINOv2, on random crops.

Choice and why: adversarial distillation work (ADD, Sauer et al. 2023; Projected GANs,
Sauer et al. 2021) found that a discriminator made of small trainable heads on the features
of a frozen, self-supervised ViT trains stably from the first step, needs little memory (no
backbone gradients are stored for its weights, only activations for the generator's
backward) and judges texture and semantics rather than pixel noise. We use DINOv2 (the
backbone the triplet loss also uses), read the patch tokens of several layers, and put one
head per layer: a 1x1 conv to ``head_channels``, LeakyReLU, a 3x3 conv to one logit per patch
position. InstantPortrait's discriminator is unconditional (eq. 6), so there is no text or
image projection.

The discriminator only ever sees random crops of ``crop_size`` pixels (images smaller than
that are first resized up), so it judges local realism at a fixed scale whatever the training
resolution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError
from ..faces.dino import IMAGENET_MEAN, IMAGENET_STD, DinoFeatureExtractor


def random_crops(
    images: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per image; smaller images are resized up first."""
    b, _, h, w = images.shape
    if min(h, w) < size:
        scale = size / min(h, w)
        h, w = max(size, round(h * scale)), max(size, round(w * scale))
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
    ys = torch.randint(0, h - size + 1, (b,), generator=generator).tolist()
    xs = torch.randint(0, w - size + 1, (b,), generator=generator).tolist()
    return torch.stack(
        [images[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys, xs))]
    )


#: DINOv2 sizes by their published configs (facebook/dinov2-small, -base), for ``random-*``
DINOV2_SIZES = {
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
}


def load_dino(spec: str) -> DinoFeatureExtractor:
    """A DINOv2 by spec: a folder or Hub id; ``tiny`` (tests); ``random-small``/``random-base``
    (the published architectures with random weights, for benchmarks)."""
    if spec == "tiny":
        return DinoFeatureExtractor.from_config(num_hidden_layers=2)
    if spec.startswith("random-"):
        size = spec.removeprefix("random-")
        if size not in DINOV2_SIZES:
            raise InputError(f"{spec}: random DINOv2 sizes are {', '.join(DINOV2_SIZES)}")
        return DinoFeatureExtractor.from_config(
            {**DINOV2_SIZES[size], "patch_size": 14, "image_size": 518, "mlp_ratio": 4},
            image_size=224,
        )
    return DinoFeatureExtractor.from_pretrained(spec)


class CropDiscriminator(nn.Module):
    """D of InstantPortrait eq. 6: logits ``(B, L)`` for images in ``[-1, 1]``.

    Args:
        backbone: a ``transformers.Dinov2Model`` (frozen here).
        crop_size: side of the random crops, a multiple of the backbone's patch size
            (default 224).
        layers: indices of the transformer layers whose patch tokens feed a head (default:
            four layers evenly spread over the depth).
        head_channels: width of each head (default 64).
    """

    def __init__(
        self,
        backbone: nn.Module,
        crop_size: int = 224,
        layers: Sequence[int] | None = None,
        head_channels: int = 64,
    ):
        super().__init__()
        cfg = backbone.config
        patch = int(cfg.patch_size)
        if crop_size % patch:
            raise InputError(f"discriminator.crop_size: a multiple of the patch size {patch}")
        depth = int(cfg.num_hidden_layers)
        if layers is None:
            layers = sorted({max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)})
        if any(not 1 <= i <= depth for i in layers):
            raise InputError(f"discriminator.layers: indices in 1..{depth}, got {list(layers)}")
        self.backbone = backbone.requires_grad_(False).eval()
        self.crop_size, self.patch, self.layers = int(crop_size), patch, list(layers)
        hidden = int(cfg.hidden_size)
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(hidden, head_channels, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(head_channels, 1, 3, padding=1),
            )
            for _ in self.layers
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def train(self, mode: bool = True) -> CropDiscriminator:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, fixed statistics
        return self

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        crops = random_crops(images, self.crop_size, generator)
        x = ((crops.float() / 2 + 0.5) - self.mean) / self.std
        x = x.to(next(self.backbone.parameters()).dtype)
        out = self.backbone(pixel_values=x, output_hidden_states=True)
        side = self.crop_size // self.patch
        logits = []
        for layer, head in zip(self.layers, self.heads):
            tokens = out.hidden_states[layer][:, 1:]  # drop CLS (and keep the patch grid)
            tokens = tokens[:, -side * side :]  # register tokens, if any, come first
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
            logits.append(head(grid.to(head[0].weight.dtype)).flatten(1))
        return torch.cat(logits, dim=1)

    # ---- construction and persistence ---------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: str = "facebook/dinov2-small", **kwargs) -> CropDiscriminator:
        """Backbone by :func:`load_dino`'s spec (folder, Hub id, ``tiny``, ``random-small``)."""
        if backbone == "tiny":
            kwargs.setdefault("crop_size", 32)
            kwargs.setdefault("head_channels", 16)
        return cls(load_dino(backbone).model, **kwargs)

    def save_heads(self, path: str | os.PathLike) -> Path:
        """The trainable heads as safetensors (the backbone is reloaded from its source)."""
        from ..writer import atomic_write

        sd = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
        return atomic_write(path, lambda p: save_file(sd, str(p)))

    def load_heads(self, path: str | os.PathLike) -> None:
        self.heads.load_state_dict(load_file(str(path)))
