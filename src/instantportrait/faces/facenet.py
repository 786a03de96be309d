"""FaceNet: InceptionResnetV1 (Szegedy et al. 2017) as in facenet-pytorch, 512-D embeddings.

The architecture and the parameter names are those of facenet-pytorch's
``InceptionResnetV1`` (``models/inception_resnet_v1.py``), so its published VGGFace2 state
dict (``20180402-114759-vggface2.pt``, converted from David Sandberg's TensorFlow FaceNet)
loads as it is; its classifier head (``logits.*``) is ignored. Input: 160x160 crops,
standardised as ``(255 x - 127.5) / 128`` (facenet-pytorch's ``fixed_image_standardization``).
The weights are never downloaded: the user passes the file.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .base import IdentityEmbedder
from .weights import load_into, read_state_dict

__all__ = ["FaceNetEmbedder", "InceptionResnetV1"]


class BasicConv2d(nn.Module):
    """Convolution (no bias), batch norm (eps 1e-3, as in TensorFlow), ReLU."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int | tuple[int, int],
        stride: int,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_planes, out_planes, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    """Inception-ResNet-A block (35x35 grid in the paper), 256 channels."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(256, 32, 1, 1)
        self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1))
        self.branch2 = nn.Sequential(
            BasicConv2d(256, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1), BasicConv2d(32, 32, 3, 1, 1)
        )
        self.conv2d = nn.Conv2d(96, 256, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Block17(nn.Module):
    """Inception-ResNet-B block (17x17 grid in the paper), 896 channels."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(896, 128, 1, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 128, 1, 1),
            BasicConv2d(128, 128, (1, 7), 1, (0, 3)),
            BasicConv2d(128, 128, (7, 1), 1, (3, 0)),
        )
        self.conv2d = nn.Conv2d(256, 896, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Block8(nn.Module):
    """Inception-ResNet-C block (8x8 grid in the paper), 1792 channels."""

    def __init__(self, scale: float = 1.0, noReLU: bool = False) -> None:  # noqa: N803
        super().__init__()
        self.scale = scale
        self.noReLU = noReLU
        self.branch0 = BasicConv2d(1792, 192, 1, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1792, 192, 1, 1),
            BasicConv2d(192, 192, (1, 3), 1, (0, 1)),
            BasicConv2d(192, 192, (3, 1), 1, (1, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1792, kernel_size=1, stride=1)
        if not noReLU:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out) * self.scale + x
        return out if self.noReLU else self.relu(out)


class Mixed6a(nn.Module):
    """Reduction-A: 256 -> 896 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, 2)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 192, 1, 1), BasicConv2d(192, 192, 3, 1, 1), BasicConv2d(192, 256, 3, 2)
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed7a(nn.Module):
    """Reduction-B: 896 -> 1792 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 384, 3, 2))
        self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 256, 3, 2))
        self.branch2 = nn.Sequential(
            BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 256, 3, 1, 1), BasicConv2d(256, 256, 3, 2)
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x))
        return torch.cat(branches, 1)


class InceptionResnetV1(nn.Module):
    """InceptionResnetV1 trunk with facenet-pytorch's parameter names; returns ``last_bn``.

    ``num_classes`` adds the classifier head ``logits`` (8631 for VGGFace2) so a full
    checkpoint can also be loaded strictly; :meth:`forward` never uses it.
    """

    def __init__(self, dropout_prob: float = 0.6, num_classes: int | None = None) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, 2)
        self.conv2d_2a = BasicConv2d(32, 32, 3, 1)
        self.conv2d_2b = BasicConv2d(32, 64, 3, 1, 1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3, 1)
        self.conv2d_4b = BasicConv2d(192, 256, 3, 2)
        self.repeat_1 = nn.Sequential(*[Block35(scale=0.17) for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*[Block17(scale=0.10) for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*[Block8(scale=0.20) for _ in range(5)])
        self.block8 = Block8(noReLU=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=0.001, momentum=0.1, affine=True)
        if num_classes is not None:
            self.logits = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised ``(B, 3, 160, 160)`` crops to raw 512-D descriptors."""
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.conv2d_4b(x)
        x = self.repeat_1(x)
        x = self.mixed_6a(x)
        x = self.repeat_2(x)
        x = self.mixed_7a(x)
        x = self.repeat_3(x)
        x = self.block8(x)
        x = self.dropout(self.avgpool_1a(x))
        return self.last_bn(self.last_linear(x.flatten(1)))


class FaceNetEmbedder(IdentityEmbedder):
    """FaceNet (Schroff et al. 2015) InceptionResnetV1 VGGFace2 embedder, 160x160 -> 512-D.

    ``forward`` takes ``[0, 1]`` crops aligned with the ``"facenet"`` template (other sizes
    are resized), standardises them and returns the raw ``last_bn`` output; :meth:`embed`
    L2-normalises it, which is what facenet-pytorch returns.
    """

    template = "facenet"
    input_size = 160
    embedding_dim = 512
    same_person_distance = None

    def __init__(self, net: InceptionResnetV1 | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else InceptionResnetV1()

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = _resize(crops.to(next(self.net.parameters()).dtype), self.input_size)
        return self.net((x * 255.0 - 127.5) / 128.0)

    @classmethod
    def from_weights(cls, path: str | os.PathLike) -> FaceNetEmbedder:
        """Load facenet-pytorch's state dict (``.pt`` or ``.safetensors``) from ``path``."""
        net = InceptionResnetV1()
        state = read_state_dict(path, "FaceNet")
        load_into(net, state, str(path), "FaceNet InceptionResnetV1", ("logits.",))
        return cls(net).eval()


def _resize(crops: torch.Tensor, size: int) -> torch.Tensor:
    if crops.shape[-2:] == (size, size):
        return crops
    return F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True)
