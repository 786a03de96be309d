"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", eq. 1) in plain PyTorch, loading the published weights without torchvision or the
``lpips`` package.

``d(x, x0) = sum_l 1/(H_l W_l) sum_{h,w} | w_l ⊙ (ŷ_l - ŷ0_l) |^2`` where ``ŷ_l`` are the
backbone's layer-``l`` activations normalised to unit length over channels and ``w_l`` a
learned non-negative per-channel weight (a 1x1 convolution).

Weights (``--weights lpips=PATH``), as published, in any mix of ``.safetensors`` and
``.pth`` files (``.pth`` read with ``weights_only=True``) given as one file or a folder:

* the backbone: torchvision's ImageNet AlexNet (``alexnet-owt-7be5be79.pth``) or VGG16
  (``vgg16-397923af.pth``); keys ``features.N.weight``/``features.N.bias``;
* the linear heads: the ``lpips`` package's ``lpips/weights/v0.1/alex.pth`` (or ``vgg.pth``);
  keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``.

The backbone kind (``alex``/``vgg``) is read from the shapes. ``LPIPS.tiny()`` builds a
two-layer random network for tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelNotFoundError

__all__ = ["LPIPS", "lpips_formula", "normalize_channels"]

#: The LPIPS input scaling layer (its ``shift``/``scale`` buffers), applied to ``[-1, 1]`` input.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# torchvision layouts: ("C", out, kernel, stride, padding) conv + ReLU, ("M", kernel, stride) pool.
_ALEX = [
    ("C", 64, 11, 4, 2),
    ("M", 3, 2),
    ("C", 192, 5, 1, 2),
    ("M", 3, 2),
    ("C", 384, 3, 1, 1),
    ("C", 256, 3, 1, 1),
    ("C", 256, 3, 1, 1),
]
_ALEX_TAPS = (1, 4, 7, 9, 11)  # relu1..relu5 of torchvision's alexnet.features
_VGG = [
    *[("C", 64, 3, 1, 1)] * 2,
    ("M", 2, 2),
    *[("C", 128, 3, 1, 1)] * 2,
    ("M", 2, 2),
    *[("C", 256, 3, 1, 1)] * 3,
    ("M", 2, 2),
    *[("C", 512, 3, 1, 1)] * 3,
    ("M", 2, 2),
    *[("C", 512, 3, 1, 1)] * 3,
]
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_TINY = [("C", 8, 3, 1, 1), ("M", 2, 2), ("C", 16, 3, 1, 1)]
_TINY_TAPS = (1, 4)
NETS = {"alex": (_ALEX, _ALEX_TAPS), "vgg": (_VGG, _VGG_TAPS), "tiny": (_TINY, _TINY_TAPS)}


def _features(layout) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for spec in layout:
        if spec[0] == "C":
            _, out, k, s, p = spec
            layers += [nn.Conv2d(channels, out, k, s, p), nn.ReLU(inplace=False)]
            channels = out
        else:
            layers.append(nn.MaxPool2d(spec[1], spec[2]))
    return nn.Sequential(*layers)


class _Lin(nn.Module):
    """The ``lpips`` package's ``NetLinLayer``: dropout, then a bias-free 1x1 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``ŷ = y / (|y|_2 + eps)`` over the channel axis (LPIPS eq. 1's unit normalisation)."""
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


def lpips_formula(
    feats_a: Sequence[torch.Tensor],
    feats_b: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
) -> torch.Tensor:
    """LPIPS eq. 1 from activations: ``sum_l mean_{h,w} sum_c w_lc (ŷa - ŷb)_lc^2``, ``(B,)``.

    ``weights[l]`` is the ``(C_l,)`` per-channel weight of layer ``l``.
    """
    total = 0.0
    for fa, fb, w in zip(feats_a, feats_b, weights):
        diff = (normalize_channels(fa) - normalize_channels(fb)) ** 2
        total = total + (diff * w.view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
    return total


class LPIPS(nn.Module):
    """LPIPS distance between images in ``[0, 1]`` (Zhang et al. 2018, eq. 1).

    Args:
        net: ``"alex"`` (the default LPIPS), ``"vgg"`` or ``"tiny"`` (random, for tests).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in NETS:
            raise InputError(f"lpips net: one of {', '.join(NETS)}; got {net!r}")
        layout, taps = NETS[net]
        self.net_name = net
        self.features = _features(layout)
        self.taps = tuple(taps)
        # AlexNet taps every conv's ReLU; VGG the last ReLU of each block.
        self.lins = nn.ModuleList(_Lin(self._tap_channels(t)) for t in taps)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), False)

    def _tap_channels(self, tap: int) -> int:
        for layer in reversed(self.features[: tap + 1]):
            if isinstance(layer, nn.Conv2d):
                return layer.out_channels
        raise AssertionError("tap before any convolution")

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The tapped activations of ``[0, 1]`` images (after LPIPS's input scaling)."""
        dtype = self.shift.dtype
        x = (images.to(dtype) * 2 - 1 - self.shift) / self.scale
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
            if i >= self.taps[-1]:
                break
        return feats

    def channel_weights(self) -> list[torch.Tensor]:
        """The per-channel weights ``w_l`` of eq. 1."""
        return [lin.model[1].weight.flatten() for lin in self.lins]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(B,)`` distances between two ``(B, 3, H, W)`` batches in ``[0, 1]`` (same size)."""
        if a.shape != b.shape:
            b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", antialias=True)
        return lpips_formula(self.layer_features(a), self.layer_features(b), self.channel_weights())

    @classmethod
    def tiny(cls, seed: int = 0) -> LPIPS:
        """A two-layer random LPIPS for tests (non-negative channel weights, as trained)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls("tiny")
            for lin in model.lins:
                lin.model[1].weight.data.abs_()
        return model.eval().requires_grad_(False)

    @classmethod
    def from_weights(cls, path: str | os.PathLike) -> LPIPS:
        """Load the published backbone and linear heads from a file or a folder (see module)."""
        from ..faces.embedders import read_state_dict

        p = Path(path).expanduser()
        if p.is_dir():
            files = sorted(
                f for f in p.iterdir() if f.suffix in (".safetensors", ".pth", ".pt", ".bin")
            )
        elif p.is_file():
            files = [p]
        else:
            raise ModelNotFoundError(f"{p}: LPIPS weights not found")
        merged: dict[str, torch.Tensor] = {}
        for f in files:
            merged.update(read_state_dict(f, "LPIPS"))
        sd = {}
        for k, v in merged.items():
            if k.startswith("net."):  # lpips package's own full state dict
                k = k[len("net.") :]
            if k.startswith("lin") and k[3:4].isdigit():
                k = f"lins.{k[3:].split('.', 1)[0]}.{k.split('.', 1)[1]}"
            sd[k] = v
        first = sd.get("features.0.weight")
        if first is None:
            raise InputError(
                f"{p}: no LPIPS backbone (torchvision alexnet/vgg16 'features.*' keys); "
                "add alexnet-owt-7be5be79.pth or vgg16-397923af.pth"
            )
        net = "alex" if first.shape[-1] == 11 else "vgg"
        model = cls(net)
        own = model.state_dict()
        wanted = {k: v for k, v in sd.items() if k in own}
        missing = [k for k in own if k not in wanted]
        if missing:
            raise InputError(
                f"{p}: incomplete LPIPS-{net} weights: {len(missing)} missing keys (e.g. "
                f"{missing[0]}); give the backbone and the lpips heads (v0.1/{net}.pth)"
            )
        model.load_state_dict(wanted)
        return model.eval().requires_grad_(False)
