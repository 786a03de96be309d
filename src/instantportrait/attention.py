"""FastFace's attention manipulation (AM) in IP-Adapter's decoupled cross-attention.

FastFace (Karpukhin et al. 2025, §3.3, eqs. 7-10) transforms the attention-probability map
``A = softmax(Q K'^T / sqrt(d))`` of the adapter's own branch (eq. 3) before it multiplies
``V'``: ``z = Attn(Q, K, V) + lambda f(A) V'`` (eq. 7), not renormalised. Two transforms:

* **AM1, scale-power** (eq. 8): ``f(A) = min(s_part A^p, 10)``, power first, then scale.
* **AM2, scheduled soft-mask** (eqs. 9-10, with the official code's semantics, spec §8
  D2-D6): first-token inversion, ``s_k nrm(sigmoid(d_k (nrm(A) - Q_p(A))))`` with min-max
  ``nrm`` per token over (batch, heads, queries), token 0 inverted back as ``max_Q - x``, and
  AdaIN blends (weight ``w``) on the maps (over the token axis) and on the output (over the
  per-head feature axis).

Presets are data (:class:`AMPreset`, the published ones in ``configs/fastface.json``); the
pure function :func:`manipulated_ip_attention` applies one; :class:`FastFaceIPAdapterAttnProcessor`
is a diffusers attention processor for IP-Adapter's ``attn2`` layers that calls it. The
denoising step index is not counted by the processor: the pipeline sets it on a shared
:class:`AMState` before each UNet call and clears it after each call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from .attention_maps import (
    _adain_blend,
    _unless_nan,
    attention_probabilities,
    scale_power,
    scheduled_soft_mask,
)

__all__ = [
    "AMPreset",
    "AMState",
    "FastFaceIPAdapterAttnProcessor",
    "am_preset",
    "am_presets",
    "attention_probabilities",
    "install_am_processors",
    "manipulated_ip_attention",
    "scale_power",
    "scheduled_soft_mask",
]

AM_KINDS = ("identity", "scale_power", "soft_mask")
PARTS = ("down", "mid", "up")


@dataclass(frozen=True)
class AMPreset:
    """One attention-manipulation configuration (FastFace §3.3; spec §4).

    Per-step values are indexed by the denoising step; a step past the end takes the last
    value (the plateau runs through the last step, spec §7 item 9).

    Attributes:
        name: the preset's name.
        kind: ``identity`` (f(A) = A; for checks), ``scale_power`` (AM1) or ``soft_mask`` (AM2).
        parts: UNet parts whose IP layers are manipulated (FastFace: down and up, not mid).
        tokens: the ID tokens transformed (``None``: all; FastFace uses all four).
        steps: the step indices manipulated (``None``: all).
        power: AM1's exponent p.
        scale: AM1's s per part.
        clamp_max: the upper clamp of the transformed map (the code's 10).
        sharpness: AM2's d per step.
        quantile: AM2's quantile level q_a per step.
        mask_scale: AM2's s per step.
        adain_weight: AM2's AdaIN blend weight w per step (1 = no AdaIN).
        apply_adain: AdaIN on maps and outputs (spec D6).
        invert_first_token: AM2's token-0 inversion (token 0 attends to the background).
        eps: added to min-max ranges and AdaIN stds (the code has no eps in min-max).
    """

    name: str
    kind: str = "identity"
    parts: tuple[str, ...] = ("down", "up")
    tokens: tuple[int, ...] | None = None
    steps: tuple[int, ...] | None = None
    power: float = 1.0
    scale: dict[str, float] = field(default_factory=lambda: {"down": 1.0, "up": 1.0})
    clamp_max: float = 10.0
    sharpness: tuple[float, ...] = (7.5, 5.0, 5.0, 5.0)
    quantile: tuple[float, ...] = (0.65,)
    mask_scale: tuple[float, ...] = (1.0, 1.55, 1.55, 1.55)
    adain_weight: tuple[float, ...] = (0.7,)
    apply_adain: bool = False
    invert_first_token: bool = False
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in AM_KINDS:
            raise ValueError(f"AM preset {self.name!r}: kind must be one of {AM_KINDS}")
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise ValueError(f"AM preset {self.name!r}: unknown parts {bad}; one of {PARTS}")
        for name in ("sharpness", "quantile", "mask_scale", "adain_weight"):
            if not getattr(self, name):
                raise ValueError(f"AM preset {self.name!r}: {name} needs at least one value")

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> AMPreset:
        """Build a preset from JSON-like data; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"AM preset {name or data.get('name')!r}: unknown keys {unknown}")
        values = dict(data)
        values.setdefault("name", name or "custom")
        for key in ("parts", "tokens", "steps", "sharpness", "quantile"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        for key in ("mask_scale", "adain_weight"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; ``AMPreset.from_dict(p.to_dict()) == p``."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def at(self, values: tuple[float, ...], step: int) -> float:
        """The per-step value for ``step`` (the last value past the end)."""
        return float(values[min(step, len(values) - 1)])

    def applies(self, part: str | None, step: int) -> bool:
        """Whether a layer of ``part`` is manipulated at ``step``."""
        return part in self.parts and (self.steps is None or step in self.steps)


@cache
def _preset_file() -> dict[str, Any]:
    text = resources.files("instantportrait").joinpath("configs/fastface.json").read_text()
    return json.loads(text)


def am_presets() -> dict[str, AMPreset]:
    """The published AM presets: ``am1``, ``am1_paper``, ``am2``, ``am2_noadain``."""
    return {
        name: AMPreset.from_dict(data, name) for name, data in _preset_file()["am_presets"].items()
    }


def am_preset(preset: str | AMPreset | dict[str, Any]) -> AMPreset:
    """Resolve a preset given by name, as data, or as an :class:`AMPreset`."""
    if isinstance(preset, AMPreset):
        return preset
    if isinstance(preset, dict):
        return AMPreset.from_dict(preset)
    presets = am_presets()
    if preset == "identity":
        return AMPreset(name="identity", kind="identity", parts=PARTS)
    if preset not in presets:
        raise ValueError(f"AM preset {preset!r}: one of identity, {', '.join(presets)}")
    return presets[preset]


def manipulated_ip_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    preset: str | AMPreset | dict[str, Any],
    part: str | None,
    step: int,
) -> torch.Tensor:
    """The IP branch's attention output with FastFace's manipulation (eqs. 7-10).

    Args:
        query: (B, H, L, D) queries of the layer.
        key, value: (B, H, S, D) keys and values of the adapter's ID tokens (K', V').
        preset: an :class:`AMPreset`, its data, or a name of :func:`am_presets` / ``identity``.
        part: the UNet part of the layer: ``down``, ``mid`` or ``up``.
        step: the denoising step index (0-based).

    Returns:
        (B, H, L, D): ``f(A) V'`` (not renormalised), before the output projection; a layer or
        step the preset does not target gets the plain ``A V'``.
    """
    preset = am_preset(preset)
    dtype = value.dtype
    q, k, v = query.float(), key.float(), value.float()
    attn = attention_probabilities(q, k)
    if not preset.applies(part, step) or preset.kind == "identity":
        return (attn @ v).to(dtype)
    if preset.kind == "scale_power":
        new = scale_power(attn, preset.power, preset.scale[part], preset.clamp_max)
    else:
        new = scheduled_soft_mask(
            attn,
            preset.at(preset.sharpness, step),
            preset.at(preset.quantile, step),
            preset.at(preset.mask_scale, step),
            invert_first_token=preset.invert_first_token,
            clamp_max=preset.clamp_max,
            eps=preset.eps,
        )
    weight = preset.at(preset.adain_weight, step)
    # w = 1 makes both blends the identity (w x + 0 AdaIN): their work is skipped
    adain = preset.kind == "soft_mask" and preset.apply_adain and weight != 1
    if adain:
        new = _adain_blend(new, attn, weight, preset.eps)
    if preset.tokens is not None:
        chosen = torch.zeros(attn.shape[-1], dtype=torch.bool, device=attn.device)
        chosen[list(preset.tokens)] = True
        new = torch.where(chosen, new, attn)
    out = new @ v
    if adain:
        out = _unless_nan(_adain_blend(out, attn @ v, weight, preset.eps), out)
    return out.to(dtype)


@dataclass
class AMState:
    """What the pipeline tells the AM processors for the current UNet call.

    ``preset`` ``None`` means stock IP-Adapter attention. ``step`` is set explicitly by the
    pipeline before each denoising step (:meth:`at_step`) and cleared after each pipeline
    call (:meth:`active`), so two calls see the same steps: no call counting.
    """

    preset: AMPreset | None = None
    step: int | None = None

    @contextlib.contextmanager
    def active(self, preset: AMPreset | None) -> Iterator[AMState]:
        """Use ``preset`` for one pipeline call; preset and step are reset afterwards."""
        self.preset, self.step = preset, None
        try:
            yield self
        finally:
            self.preset, self.step = None, None

    def at_step(self, step: int) -> None:
        """Declare the denoising step index of the next UNet call."""
        self.step = int(step)


def _part_of(name: str) -> str | None:
    for part in PARTS:
        if name.startswith(f"{part}_block"):
            return part
    return None


class FastFaceIPAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    """IP-Adapter's decoupled cross-attention with FastFace's manipulation of the IP branch.

    Same weights, scales and masks as diffusers' :class:`IPAdapterAttnProcessor2_0` (so
    ``set_ip_adapter_scale`` and ``load_ip_adapter`` state keep working); the text attention
    is computed exactly as there. When ``state.preset`` targets this layer's ``part`` at
    ``state.step``, the IP branch is :func:`manipulated_ip_attention`.

    Args:
        hidden_size, cross_attention_dim, num_tokens, scale: as the diffusers processor.
        part: ``down``, ``mid`` or ``up`` (from the layer's module name).
        state: the :class:`AMState` shared with the pipeline.
    """

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: int | None = None,
        num_tokens: tuple[int, ...] | list[int] | int = (4,),
        scale: float | list[float] = 1.0,
        *,
        part: str | None = None,
        state: AMState | None = None,
    ) -> None:
        super().__init__(hidden_size, cross_attention_dim, num_tokens, scale)
        self.part = part
        self.state = state if state is not None else AMState()

    @classmethod
    def from_stock(
        cls, stock: IPAdapterAttnProcessor2_0, part: str | None, state: AMState
    ) -> FastFaceIPAdapterAttnProcessor:
        """Wrap a loaded diffusers IP processor, sharing its projection modules."""
        proc = cls.__new__(cls)
        torch.nn.Module.__init__(proc)
        proc.hidden_size, proc.cross_attention_dim = stock.hidden_size, stock.cross_attention_dim
        proc.num_tokens, proc.scale = stock.num_tokens, stock.scale
        proc.to_k_ip, proc.to_v_ip = stock.to_k_ip, stock.to_v_ip
        proc.part, proc.state = part, state
        return proc

    def _ip_attention(self, query, key, value) -> torch.Tensor:
        preset, step = self.state.preset, self.state.step
        if preset is None or not preset.applies(self.part, step if step is not None else 0):
            return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0)
        if step is None:
            raise RuntimeError(
                "FastFace AM: no step index set; call AMState.at_step(k) before the UNet call"
            )
        return manipulated_ip_attention(query, key, value, preset, self.part, step)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: torch.Tensor | list | None = None,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, tuple):
            raise ValueError("IP-Adapter attention needs (text states, [ID states]) as a tuple")
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = encoder_hidden_states.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, encoder_hidden_states.shape[1], batch
            )
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        def merge(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        query = heads(query)
        hidden_states = F.scaled_dot_product_attention(
            query, heads(key), heads(value), attn_mask=attention_mask, dropout_p=0.0
        )
        hidden_states = merge(hidden_states)

        masks = ip_adapter_masks
        if masks is not None and not isinstance(masks, list):
            masks = list(masks.unsqueeze(1))
        if masks is None:
            masks = [None] * len(self.scale)
        for states, ip_scale, to_k_ip, to_v_ip, mask in zip(
            ip_hidden_states, self.scale, self.to_k_ip, self.to_v_ip, masks
        ):
            scales = ip_scale if isinstance(ip_scale, list) else [ip_scale]
            if all(s == 0 for s in scales):
                continue
            if mask is None:
                ip = self._ip_attention(query, heads(to_k_ip(states)), heads(to_v_ip(states)))
                hidden_states = hidden_states + ip_scale * merge(ip)
                continue
            from diffusers.image_processor import IPAdapterMaskProcessor

            per_image = scales if len(scales) == mask.shape[1] else scales * mask.shape[1]
            for i in range(mask.shape[1]):
                ip = merge(
                    self._ip_attention(
                        query, heads(to_k_ip(states[:, i])), heads(to_v_ip(states[:, i]))
                    )
                )
                down = IPAdapterMaskProcessor.downsample(
                    mask[:, i], batch, ip.shape[1], ip.shape[2]
                ).to(dtype=query.dtype, device=query.device)
                hidden_states = hidden_states + per_image[i] * (ip * down)

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_am_processors(unet: torch.nn.Module, state: AMState) -> int:
    """Replace every diffusers IP-Adapter processor of ``unet`` by the FastFace one.

    All IP layers get it (mid included, where FastFace's presets leave it stock) so a preset
    decides per part; self-attention and any other processor are left as they are. Returns
    the number of IP layers now under ``state``. Call after ``load_ip_adapter``.
    """
    processors = dict(unet.attn_processors)
    count = 0
    for name, proc in processors.items():
        if isinstance(proc, FastFaceIPAdapterAttnProcessor):
            proc.state, count = state, count + 1
        elif isinstance(proc, IPAdapterAttnProcessor2_0):
            processors[name] = FastFaceIPAdapterAttnProcessor.from_stock(
                proc, _part_of(name), state
            )
            count += 1
    unet.set_attn_processor(processors)
    return count
