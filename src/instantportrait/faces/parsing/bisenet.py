"""BiSeNet face parsing (Yu et al. 2018) as trained on CelebAMask-HQ by face-parsing.PyTorch.

The network of ``zllrunning/face-parsing.PyTorch`` (``model.py``, ``resnet.py``), written
here from reading that code: a ResNet-18 context path (``cp.resnet``) whose 1/16 and 1/32
features are refined by attention refinement modules (``cp.arm16``, ``cp.arm32``) plus a
global-average context (``cp.conv_avg``); the "spatial path" is the ResNet's 1/8 feature
(the official code dropped its separate spatial path), fused with the context by the feature
fusion module (``ffm``); ``conv_out`` predicts the 19 CelebAMask-HQ classes, ``conv_out16``
and ``conv_out32`` are the training-time auxiliary heads. Module and parameter names match
the released ``79999_iter.pth`` (a plain state dict), so it loads as it is; facexlib's
``parsing_bisenet.pth`` uses the same module tree (``facexlib/parsing/bisenet.py``), so it
needs no renaming either.

Every width is a config entry (``@register_to_config``), so a tiny parser is the same class
with smaller widths; the defaults are the released model's.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ...errors import InputError

__all__ = ["BiSeNet", "config_from_state_dict"]


class ConvBNReLU(nn.Module):
    """Convolution (no bias), BatchNorm, ReLU: ``conv``, ``bn``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + branch)


class ResNet18(nn.Module):
    """The ResNet-18 trunk without its classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self, widths: tuple[int, ...], blocks: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cins = (widths[0], *widths[:-1])
        for i, (cin, cout) in enumerate(zip(cins, widths), start=1):
            stride = 1 if i == 1 else 2
            stage = [BasicBlock(cin, cout, stride)] + [
                BasicBlock(cout, cout) for _ in range(blocks - 1)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*stage))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    """ARM: a 3x3 ConvBNReLU whose output is reweighted per channel by a pooled sigmoid gate."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * gate


class ContextPath(nn.Module):
    """ResNet-18 + ARMs on the 1/16 and 1/32 features + global context, merged top-down.

    Returns the ResNet's 1/8 feature (BiSeNet's "spatial" input), the context at 1/8 and the
    context at 1/16 (the auxiliary head's input).
    """

    def __init__(self, widths: tuple[int, ...], blocks: int, context: int) -> None:
        super().__init__()
        self.resnet = ResNet18(widths, blocks)
        self.arm16 = AttentionRefinementModule(widths[2], context)
        self.arm32 = AttentionRefinementModule(widths[3], context)
        self.conv_head32 = ConvBNReLU(context, context, 3)
        self.conv_head16 = ConvBNReLU(context, context, 3)
        self.conv_avg = ConvBNReLU(widths[3], context, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        # the global context is one value per channel, broadcast over the 1/32 grid
        glob = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        up32 = F.interpolate(self.arm32(feat32) + glob, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16), up32


class FeatureFusionModule(nn.Module):
    """FFM: concatenate, 1x1 ConvBNReLU, then add a squeeze-excitation reweighted copy."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        pooled = feat.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(pooled))))
        return feat + feat * gate


class BiSeNetOutput(nn.Module):
    """A prediction head: 3x3 ConvBNReLU then a 1x1 classifier (no bias)."""

    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.conv_out = nn.Conv2d(mid, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(ModelMixin, ConfigMixin):
    """BiSeNet face parser: normalised ``(B, 3, H, W)`` images -> class logits at ``(H, W)``.

    Args:
        num_classes: parsing classes (19 for CelebAMask-HQ: background + 18 parts).
        block_out_channels: ResNet-18 stage widths (64, 128, 256, 512).
        layers_per_block: basic blocks per ResNet stage (2).
        context_channels: width of the context path after the ARMs (128).
        fusion_channels: FFM output width (256); its input is the 1/8 ResNet feature
            concatenated with the context, ``block_out_channels[1] + context_channels``.
        head_channels: hidden width of the main head ``conv_out`` (256).
        aux_head_channels: hidden width of the auxiliary heads ``conv_out16/32`` (64).
        sample_size: the side images are resized to before parsing (512, the official input).
    """

    @register_to_config
    def __init__(
        self,
        num_classes: int = 19,
        block_out_channels: tuple[int, ...] = (64, 128, 256, 512),
        layers_per_block: int = 2,
        context_channels: int = 128,
        fusion_channels: int = 256,
        head_channels: int = 256,
        aux_head_channels: int = 64,
        sample_size: int = 512,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in block_out_channels)
        if len(widths) != 4:
            raise ValueError(f"block_out_channels: four stage widths, got {widths}")
        self.cp = ContextPath(widths, layers_per_block, context_channels)
        self.ffm = FeatureFusionModule(widths[1] + context_channels, fusion_channels)
        self.conv_out = BiSeNetOutput(fusion_channels, head_channels, num_classes)
        self.conv_out16 = BiSeNetOutput(context_channels, aux_head_channels, num_classes)
        self.conv_out32 = BiSeNetOutput(context_channels, aux_head_channels, num_classes)

    def forward(
        self, pixel_values: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(B, num_classes, H, W)`` (bilinear, ``align_corners=True`` as the official).

        ``return_aux``: also the two auxiliary heads' logits (training-time outputs).
        """
        size = pixel_values.shape[2:]
        feat8, context8, context16 = self.cp(pixel_values)
        heads = [self.conv_out(self.ffm(feat8, context8))]
        if return_aux:
            heads += [self.conv_out16(context8), self.conv_out32(context16)]
        outs = [F.interpolate(h, size=size, mode="bilinear", align_corners=True) for h in heads]
        return tuple(outs) if return_aux else outs[0]  # type: ignore[return-value]


def _width(state: dict[str, torch.Tensor], key: str, source: str) -> int:
    if key not in state:
        raise InputError(f"{source}: not a BiSeNet face-parsing state dict (no key {key})")
    return int(state[key].shape[0])


def config_from_state_dict(state: dict[str, torch.Tensor], source: str) -> dict[str, int | tuple]:
    """The :class:`BiSeNet` config whose parameters have the shapes of ``state``.

    Reads the widths from one weight of each part; every other key is checked when the
    state dict is loaded. A missing key is one :class:`InputError` line naming it.
    """
    blocks = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"cp\.resnet\.layer1\.(\d+)\.", k))),
        default=-1,
    )
    if blocks == 0:
        raise InputError(
            f"{source}: not a BiSeNet face-parsing state dict (no key cp.resnet.layer1.0.*)"
        )
    widths = tuple(_width(state, f"cp.resnet.layer{i}.0.conv1.weight", source) for i in range(1, 5))
    return {
        "num_classes": _width(state, "conv_out.conv_out.weight", source),
        "block_out_channels": widths,
        "layers_per_block": blocks,
        "context_channels": _width(state, "cp.arm16.conv.conv.weight", source),
        "fusion_channels": _width(state, "ffm.convblk.conv.weight", source),
        "head_channels": _width(state, "conv_out.conv.conv.weight", source),
        "aux_head_channels": _width(state, "conv_out16.conv.conv.weight", source),
    }
