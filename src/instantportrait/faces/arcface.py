"""ArcFace (Deng et al. 2019): insightface's iresnet in PyTorch, and its ONNX model for metrics.

:class:`IResNet` follows ``recognition/arcface_torch/backbones/iresnet.py`` of insightface
(layer and parameter names included), so an arcface_torch ``backbone.pth`` state dict loads
as it is (iresnet50 ``[3, 4, 14, 3]``, iresnet100 ``[3, 13, 30, 3]``; the depth is read from
the keys). Input: 112x112 crops aligned with the ``"arcface"`` template, RGB, normalised as
``(x - 0.5) / 0.5``; output: 512-D descriptors (the ``features`` BatchNorm).

:class:`ArcFaceOnnxEmbedder` runs insightface's released ``w600k_r50.onnx`` (``buffalo_l``)
with ``onnxruntime`` (an optional dependency); it gives no gradients and is meant for
evaluation. The weights are never downloaded: the user passes the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelNotFoundError, optional_import
from .base import IdentityEmbedder
from .weights import load_into, read_state_dict

__all__ = [
    "ARCHITECTURES",
    "ArcFaceEmbedder",
    "ArcFaceOnnxEmbedder",
    "IResNet",
    "has_builtin_normalisation",
    "onnx_node_names",
    "iresnet50",
    "iresnet100",
]

#: Blocks per stage of the published iresnets.
ARCHITECTURES = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual block: BN, conv, BN, PReLU, conv (stride), BN, plus the shortcut."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface's IResNet for 112x112 faces (``fc`` reads the 7x7x512 map)."""

    fc_scale = 7 * 7

    def __init__(
        self,
        layers: tuple[int, ...] = ARCHITECTURES["iresnet50"],
        num_features: int = 512,
        widths: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1])
        self.layer3 = self._make_layer(widths[2], layers[2])
        self.layer4 = self._make_layer(widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(widths[3] * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, 112, 112)`` crops to raw descriptors ``(B, num_features)``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet50(**kwargs: Any) -> IResNet:
    """insightface iresnet50 (``[3, 4, 14, 3]``), e.g. ``ms1mv3_arcface_r50``."""
    return IResNet(ARCHITECTURES["iresnet50"], **kwargs)


def iresnet100(**kwargs: Any) -> IResNet:
    """insightface iresnet100 (``[3, 13, 30, 3]``), e.g. ``glint360k_cosface_r100``."""
    return IResNet(ARCHITECTURES["iresnet100"], **kwargs)


def _layers_from_keys(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    counts = [0, 0, 0, 0]
    for key in state:
        m = re.match(r"layer([1-4])\.(\d+)\.", key)
        if m:
            stage, idx = int(m.group(1)) - 1, int(m.group(2))
            counts[stage] = max(counts[stage], idx + 1)
    return tuple(counts)


class ArcFaceEmbedder(IdentityEmbedder):
    """ArcFace iresnet embedder: ``[0, 1]`` 112x112 ``"arcface"`` crops -> 512-D descriptors."""

    template = "arcface"
    input_size = 112
    embedding_dim = 512
    same_person_distance = None

    def __init__(self, net: IResNet | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else iresnet50()
        self.embedding_dim = int(self.net.features.num_features)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.net.conv1.weight.dtype)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(112, 112), mode="bilinear", antialias=True)
        return self.net((x - 0.5) / 0.5)

    @classmethod
    def from_weights(cls, path: str | os.PathLike, arch: str | None = None) -> ArcFaceEmbedder:
        """Load an arcface_torch state dict (``backbone.pth`` or ``.safetensors``).

        Args:
            path: the weight file.
            arch: a key of :data:`ARCHITECTURES` (default: inferred from the keys).
        """
        state = read_state_dict(path, "ArcFace")
        if arch is None:
            layers = _layers_from_keys(state)
            if 0 in layers:
                raise InputError(f"{path}: not an insightface iresnet state dict (no layer1-4)")
        elif arch in ARCHITECTURES:
            layers = ARCHITECTURES[arch]
        else:
            raise InputError(f"arch: one of {', '.join(ARCHITECTURES)}; got {arch!r}")
        num_features = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 512
        # stage widths from the weights (64-128-256-512 in every published model)
        widths = tuple(
            int(state[f"layer{i}.0.conv1.weight"].shape[0])
            if f"layer{i}.0.conv1.weight" in state
            else default
            for i, default in zip(range(1, 5), (64, 128, 256, 512))
        )
        net = IResNet(layers, num_features=num_features, widths=widths)
        load_into(net, state, str(path), f"iresnet {list(layers)}")
        return cls(net).eval()


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes):
    """``(field number, wire type, value)`` of a protobuf message; value: int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def onnx_node_names(path: str | os.PathLike, limit: int = 8) -> list[str]:
    """The names of the first ``limit`` nodes of an ONNX graph, read without the ``onnx``
    package (ModelProto field 7 is the graph, GraphProto field 1 its nodes, NodeProto field 3
    a node's name)."""
    data = Path(path).read_bytes()
    names: list[str] = []
    for number, wire, graph in _fields(data):
        if number != 7 or wire != 2:
            continue
        for gnum, gwire, node in _fields(graph):
            if gnum != 1 or gwire != 2:
                continue
            name = next((v for n, w, v in _fields(node) if n == 3 and w == 2), b"")
            names.append(bytes(name).decode("utf-8", "replace"))
            if len(names) >= limit:
                return names
    return names


def has_builtin_normalisation(path: str | os.PathLike) -> bool:
    """True when an ArcFace ONNX graph normalises its input itself (mxnet conversions start
    with ``Sub``/``_minus`` and ``Mul``/``_mul`` nodes): insightface's ``ArcFaceONNX`` then
    feeds raw ``[0, 255]`` pixels (mean 0, std 1)."""
    names = onnx_node_names(path, 8)
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return sub and mul


class ArcFaceOnnxEmbedder(IdentityEmbedder):
    """insightface's ArcFace ONNX model (``w600k_r50.onnx``) through onnxruntime; no gradients.

    Preprocessing as insightface's ``ArcFaceONNX``: RGB, ``(255 x - mean) / std`` with mean and
    std 127.5, or 0 and 1 for graphs that normalise their input themselves (mxnet-converted
    models, :func:`has_builtin_normalisation`).

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CPU).
    """

    template = "arcface"
    input_size = 112
    embedding_dim = 512
    same_person_distance = None

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None) -> None:
        super().__init__()
        ort = optional_import("onnxruntime", "onnx", "the ArcFace ONNX model")
        p = Path(path)
        if not p.is_file():
            raise ModelNotFoundError(f"{p}: ArcFace ONNX model not found (w600k_r50.onnx)")
        try:
            self.session = ort.InferenceSession(
                str(p), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{p}: cannot load the ONNX model ({first})") from None
        try:
            builtin = has_builtin_normalisation(p)
        except (OSError, ValueError):
            raise InputError(f"{p}: not an ONNX model (cannot read its graph)") from None
        self.input_mean, self.input_std = (0.0, 1.0) if builtin else (127.5, 127.5)
        self.path = p
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        out_shape = self.session.get_outputs()[0].shape
        if isinstance(out_shape[-1], int):
            self.embedding_dim = out_shape[-1]

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.detach().float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(112, 112), mode="bilinear", antialias=True)
        arr = ((x * 255.0 - self.input_mean) / self.input_std).cpu().numpy().astype(np.float32)
        if self.fixed_batch == 1:
            out = np.concatenate(
                [self.session.run(None, {self.input_name: a[None]})[0] for a in arr]
            )
        else:
            out = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(out).to(crops.device, crops.dtype)
