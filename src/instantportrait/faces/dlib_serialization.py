"""A reader of dlib's binary serialization of DNNs (``.dat`` files), written from the format.

It turns a network file such as ``dlib_face_recognition_resnet_model_v1.dat`` into a plain
description: the input layer, the computational layers in forward order (type name,
hyper-parameters, float32 numpy arrays) and the loss layer. Nothing is executed and no dlib
code is needed; anything unexpected raises :class:`~instantportrait.errors.InputError`
naming the file.

The format, as dlib writes it (``dlib/serialize.h``, ``dlib/dnn/core.h``, ``layers.h``,
``input.h``, ``loss.h``, ``tensor.h``):

* integers: one control byte (low nibble = number of bytes that follow, ``0x80`` = negative)
  then the magnitude, little-endian; zero is ``01 00``;
* floats and doubles: two integers, a 64-bit mantissa and a 16-bit exponent,
  ``value = mantissa * 2**exponent`` (exponents 32000/32001/32002 = +inf/-inf/nan);
* booleans: the ASCII characters ``'1'`` / ``'0'``; strings: an integer length then bytes;
* tensors (version 2): ``n, k, nr, nc`` then raw little-endian float32 in NCHW order;
* a network is serialized top-down, each ``add_layer`` writing its version and then its
  sub-network *before* its own details, so the file holds the loss layer, then the version
  numbers of every layer from the top down to the input, then the input layer, then each
  layer's details from the bottom up.

Tag and skip layers (``tag1``, ``skip1``) are written as a bare version number, without their
id, and ``add_prev_`` does not store the id of the tag it adds either. The wiring is
recovered with the rule of dlib's residual templates (``residual`` and ``residual_down`` of
``examples/dnn_face_recognition_ex.cpp``): one marker is a tag; two consecutive markers are a
tag followed by a skip back to the tag before it; ``add_prev`` adds the most recent tag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["DlibLayer", "DlibNetwork", "read_dlib_network", "parse_dlib_network"]

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002
#: dlib's ``layer_mode`` enum (``affine_`` and ``bn_``).
_CONV_MODE, _FC_MODE = 0, 1
#: dlib's ``fc_bias_mode`` enum.
_FC_HAS_BIAS, _FC_NO_BIAS = 0, 1


@dataclass
class DlibLayer:
    """One layer of a dlib network: its type, hyper-parameters and parameter arrays.

    ``kind`` is one of ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``fc``,
    ``add_prev``, ``tag``, ``skip``; ``dlib_type`` is the version string dlib wrote
    (``con_4``...); ``attrs`` holds the hyper-parameters and ``arrays`` the float32 parameters
    (``weight``/``bias`` for ``con`` and ``fc``, ``gamma``/``beta`` for ``affine``).
    """

    kind: str
    dlib_type: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """A parsed dlib network: input layer, layers in forward order, loss layer."""

    source: str
    input: dict[str, Any]
    layers: list[DlibLayer]
    loss: dict[str, Any]


class _Reader:
    """Cursor over the bytes of one file; every failure names the file and the offset."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> InputError:
        return InputError(
            f"{self.source}: not a readable dlib network file ({what} at byte {self.pos})"
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file truncated while reading {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def peek_int(self) -> int | None:
        """The next integer without consuming it (``None`` when it cannot be one)."""
        saved = self.pos
        try:
            return self.int("integer")
        except InputError:
            return None
        finally:
            self.pos = saved

    def int(self, what: str, *, max_bytes: int = 8) -> int:
        """dlib's compact integer (``serialize.h``: control byte, then little-endian bytes)."""
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size == 0 or size > max_bytes:
            self.pos -= 1
            raise self.fail(f"bad integer control byte 0x{control:02x} for {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def uint(self, what: str) -> int:
        value = self.int(what)
        if value < 0:
            raise self.fail(f"negative value {value} for {what}")
        return value

    def float(self, what: str) -> float:
        """dlib's portable float (``float_details.h``: mantissa * 2**exponent)."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"old ASCII float encoding (unsupported) for {what}")
        mantissa = self.int(what)
        exponent = self.int(what, max_bytes=2)
        if exponent == _FLOAT_INF:
            return float("inf")
        if exponent == _FLOAT_NINF:
            return float("-inf")
        if exponent == _FLOAT_NAN:
            return float("nan")
        try:
            return float(np.ldexp(np.float64(mantissa), exponent))
        except (OverflowError, ValueError) as exc:  # pragma: no cover - absurd exponents
            raise self.fail(f"float out of range for {what}") from exc

    def bool(self, what: str) -> bool:
        char = self.take(1, what)
        if char not in (b"0", b"1"):
            self.pos -= 1
            raise self.fail(f"bad boolean {char!r} for {what}")
        return char == b"1"

    def string(self, what: str, *, max_len: int = 4096) -> str:
        length = self.uint(what)
        if length > max_len:
            raise self.fail(f"implausible string length {length} for {what}")
        raw = self.take(length, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise self.fail(f"non-ASCII string for {what}") from exc

    def expect_version(self, what: str, allowed: tuple[int, ...]) -> int:
        version = self.int(f"version of {what}")
        if version not in allowed:
            raise self.fail(f"unsupported {what} version {version}")
        return version

    def tensor(self, what: str) -> np.ndarray:
        """A ``resizable_tensor`` (``tensor.h``), returned as float32 ``(n, k, nr, nc)``."""
        version = self.expect_version(f"tensor {what}", (1, 2))
        dims = [self.uint(f"shape of {what}") for _ in range(4)]
        count = int(np.prod(dims, dtype=np.int64))
        if count * 4 > len(self.data) - self.pos:
            raise self.fail(f"file truncated in the data of tensor {what} {tuple(dims)}")
        if version == 2:  # n, k, nr, nc then raw little-endian float32
            raw = self.take(4 * count, f"data of {what}")
            return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)
        # version 1 (older dlib): n, nr, nc, k then one portable float per value.
        n, nr, nc, k = dims
        values = np.array([self.float(what) for _ in range(count)], dtype=np.float32)
        return values.reshape(n, k, nr, nc)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        """An ``alias_tensor`` (a view's shape: ``n, k, nr, nc``)."""
        self.expect_version(f"alias tensor {what}", (1,))
        n, k, nr, nc = (self.uint(f"shape of {what}") for _ in range(4))
        return n, k, nr, nc


def _con(r: _Reader, dlib_type: str) -> DlibLayer:
    """``con_`` (layers.h, ``con_4``): params = filters (out, in, nr, nc) then biases."""
    params = r.tensor("con params").reshape(-1)
    attrs = {
        "num_filters": r.int("num_filters"),
        "nr": r.int("nr"),
        "nc": r.int("nc"),
        "stride_y": r.int("stride_y"),
        "stride_x": r.int("stride_x"),
        "padding_y": r.int("padding_y"),
        "padding_x": r.int("padding_x"),
    }
    filters = r.alias_tensor("con filters")
    biases = r.alias_tensor("con biases")
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        r.float(name)
    n_filt = int(np.prod(filters))
    n_bias = int(np.prod(biases))
    if filters[0] != attrs["num_filters"] or n_bias != attrs["num_filters"]:
        raise r.fail(f"con filter shape {filters} does not match {attrs['num_filters']} filters")
    if filters[2:] != (attrs["nr"], attrs["nc"]) or params.size != n_filt + n_bias:
        raise r.fail(f"con params of size {params.size} do not match filters {filters}")
    attrs["in_channels"] = filters[1]
    return DlibLayer(
        "con",
        dlib_type,
        attrs,
        {"weight": params[:n_filt].reshape(filters), "bias": params[n_filt:].copy()},
    )


def _affine(r: _Reader, dlib_type: str) -> DlibLayer:
    """``affine_`` (layers.h): ``y = gamma * x + beta``, per channel (CONV) or per value (FC)."""
    params = r.tensor("affine params").reshape(-1)
    gamma = r.alias_tensor("affine gamma")
    beta = r.alias_tensor("affine beta")
    mode = r.int("affine mode")
    if mode not in (_CONV_MODE, _FC_MODE):
        raise r.fail(f"unknown affine mode {mode}")
    size = int(np.prod(gamma))
    if gamma != beta or params.size != 2 * size:
        raise r.fail(f"affine params of size {params.size} do not match gamma {gamma}")
    shape = [gamma[1]] if mode == _CONV_MODE else list(gamma[1:])
    return DlibLayer(
        "affine",
        dlib_type,
        {"mode": "conv" if mode == _CONV_MODE else "fc", "channels": gamma[1], "shape": shape},
        {"gamma": params[:size].reshape(shape), "beta": params[size:].reshape(shape)},
    )


def _pool(kind: str) -> Any:
    def read(r: _Reader, dlib_type: str) -> DlibLayer:
        """``max_pool_`` / ``avg_pool_`` (layers.h): window 0 means the whole input."""
        attrs = {
            "nr": r.int("nr"),
            "nc": r.int("nc"),
            "stride_y": r.int("stride_y"),
            "stride_x": r.int("stride_x"),
            "padding_y": r.int("padding_y"),
            "padding_x": r.int("padding_x"),
        }
        return DlibLayer(kind, dlib_type, attrs)

    return read


def _fc(r: _Reader, dlib_type: str) -> DlibLayer:
    """``fc_`` (layers.h, ``fc_2``): params (num_inputs [+1 bias row], num_outputs)."""
    num_outputs = r.uint("fc num_outputs")
    num_inputs = r.uint("fc num_inputs")
    params = r.tensor("fc params").reshape(-1)
    r.alias_tensor("fc weights")
    r.alias_tensor("fc biases")
    bias_mode = r.int("fc bias mode")
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        r.float(name)
    if bias_mode not in (_FC_HAS_BIAS, _FC_NO_BIAS):
        raise r.fail(f"unknown fc bias mode {bias_mode}")
    rows = num_inputs + (1 if bias_mode == _FC_HAS_BIAS else 0)
    if params.size != rows * num_outputs:
        raise r.fail(f"fc params of size {params.size} do not match {rows}x{num_outputs}")
    table = params.reshape(rows, num_outputs)
    arrays = {"weight": np.ascontiguousarray(table[:num_inputs].T)}  # torch (out, in)
    if bias_mode == _FC_HAS_BIAS:
        arrays["bias"] = table[num_inputs].copy()
    attrs = {
        "num_outputs": num_outputs,
        "num_inputs": num_inputs,
        "bias": bias_mode == _FC_HAS_BIAS,
    }
    return DlibLayer("fc", dlib_type, attrs, arrays)


def _no_details(kind: str) -> Any:
    def read(r: _Reader, dlib_type: str) -> DlibLayer:
        """A layer without parameters (``relu_``, ``add_prev_``)."""
        return DlibLayer(kind, dlib_type)

    return read


_LAYER_READERS = {
    "con_4": _con,
    "affine_": _affine,
    "relu_": _no_details("relu"),
    "add_prev_": _no_details("add_prev"),
    "max_pool_2": _pool("max_pool"),
    "avg_pool_2": _pool("avg_pool"),
    "fc_2": _fc,
}


def _input_layer(r: _Reader) -> dict[str, Any]:
    """``input_rgb_image_sized`` (input.h): per-channel means and the fixed image size."""
    name = r.string("input layer type")
    if name != "input_rgb_image_sized":
        raise r.fail(f"unsupported input layer {name!r}")
    mean = [r.float("avg_red"), r.float("avg_green"), r.float("avg_blue")]
    rows, cols = r.uint("input rows"), r.uint("input cols")
    # to_tensor: (pixel - avg) / 256 for pixels in [0, 255], NCHW, channels R, G, B.
    return {"type": name, "mean_rgb": mean, "scale": 256.0, "rows": rows, "cols": cols}


def _loss_layer(r: _Reader) -> dict[str, Any]:
    """``add_loss_layer`` (core.h) holding ``loss_metric_`` (loss.h): margin, threshold."""
    r.expect_version("add_loss_layer", (1,))
    name = r.string("loss layer type")
    if name != "loss_metric_2":
        raise r.fail(f"unsupported loss layer {name!r}")
    return {
        "type": "loss_metric",
        "margin": r.float("loss margin"),
        "distance_threshold": r.float("loss distance threshold"),
    }


def _layer_body(r: _Reader, version: int) -> DlibLayer:
    """One ``add_layer``'s details and its bookkeeping tensors (core.h ``serialize``)."""
    dlib_type = r.string("layer type")
    reader = _LAYER_READERS.get(dlib_type)
    if reader is None:
        raise r.fail(f"unsupported layer type {dlib_type!r}")
    layer = reader(r, dlib_type)
    for name in ("this_layer_setup_called", "gradient_input_is_stale", "output_disabled"):
        r.bool(name)
    r.tensor("x_grad")
    r.tensor("cached_output")
    if version == 2:
        r.tensor("params_grad")
    return layer


def _bottom_body(r: _Reader, version: int) -> tuple[dict[str, Any], DlibLayer]:
    """The lowest ``add_layer``, which holds the input layer (core.h, versions 2 and 3)."""
    input_desc = _input_layer(r)
    dlib_type = r.string("layer type")
    reader = _LAYER_READERS.get(dlib_type)
    if reader is None:
        raise r.fail(f"unsupported layer type {dlib_type!r}")
    layer = reader(r, dlib_type)
    for name in ("this_layer_setup_called", "gradient_input_is_stale", "output_disabled"):
        r.bool(name)
    r.tensor("x_grad")
    r.tensor("cached_output")
    r.tensor("grad_final")
    if version == 3:
        r.uint("sample_expansion_factor")
    return input_desc, layer


def _wire_tags(r: _Reader, layers: list[DlibLayer]) -> list[DlibLayer]:
    """Give tag/skip markers and ``add_prev`` their ids (rule in the module docstring)."""
    wired: list[DlibLayer] = []
    tags: list[int] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        if layer.kind == "marker":
            run = 1
            while i + run < len(layers) and layers[i + run].kind == "marker":
                run += 1
            if run > 2:
                raise r.fail(f"unsupported run of {run} tag/skip layers")
            tags.append(len(tags))
            wired.append(DlibLayer("tag", "add_tag_layer", {"id": tags[-1]}))
            if run == 2:
                if len(tags) < 2:
                    raise r.fail("skip layer without an earlier tag")
                wired.append(DlibLayer("skip", "add_skip_layer", {"tag": tags[-2]}))
            i += run
            continue
        if layer.kind == "add_prev":
            if not tags:
                raise r.fail("add_prev layer without a tag below it")
            layer.attrs["tag"] = tags[-1]
        wired.append(layer)
        i += 1
    return wired


def parse_dlib_network(data: bytes, source: str = "<bytes>") -> DlibNetwork:
    """Parse the bytes of a dlib DNN file (``serialize(net)``) into a :class:`DlibNetwork`."""
    r = _Reader(bytes(data), source)
    if not data:
        raise r.fail("empty file")
    loss = _loss_layer(r)
    # Version numbers from the top layer down: add_layer (2) or tag/skip (1); the lowest
    # add_layer (version 2 or 3) is followed by the input layer's type name.
    headers: list[int] = []
    while True:
        version = r.int("layer version")
        if version not in (1, 2, 3):
            raise r.fail(f"unsupported layer version {version}")
        nxt = r.peek_int()
        if nxt is None:
            raise r.fail("file truncated in the layer list")
        if nxt > 3:  # a string length: the input layer's name starts here
            if version not in (2, 3):
                raise r.fail("the input layer is not under a computational layer")
            bottom_version = version
            break
        headers.append(version)
        if len(headers) > 100_000:
            raise r.fail("implausibly deep network")
    input_desc, bottom = _bottom_body(r, bottom_version)
    layers = [bottom]
    for version in reversed(headers):
        if version == 1:
            layers.append(DlibLayer("marker"))
        else:
            layers.append(_layer_body(r, version))
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected trailing bytes")
    return DlibNetwork(source, input_desc, _wire_tags(r, layers), loss)


def read_dlib_network(path: str | os.PathLike) -> DlibNetwork:
    """Read a dlib DNN ``.dat`` file (e.g. ``dlib_face_recognition_resnet_model_v1.dat``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read dlib network file ({exc.strerror})") from exc
    return parse_dlib_network(data, str(path))
