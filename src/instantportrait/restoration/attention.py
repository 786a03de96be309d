"""Self-attention feature capture and injection for DIIR, as diffusers attention processors.

Every ``attn1`` (self-attention) layer of the frozen UNet gets a
:class:`SelfAttentionFusionProcessor` sharing one :class:`SelfAttentionStore`. The store says
what the processors do in the current UNet call:

* ``capture`` (DDIM inversion): compute the layer as usual and keep its output features
  ``SA^C_t`` under ``(t, layer)``;
* ``inject`` (regeneration): compute the layer as usual (``SA^R_t``), then return
  ``MGFF(SA^R_t, SA^C_t, M_B)`` (Algorithm 1 line 6, :func:`~.fusion.mgff`) so that the fused
  features flow on through the same forward pass (spec §4.3: line 4's separate call is only an
  initialisation);
* ``off``: plain attention.

With classifier-free guidance the batch holds ``k`` copies of the faces (unconditional,
conditional); the cached features and the mask are repeated ``k`` times, so fusion applies to
both branches alike (spec §4.3). No method of diffusers is patched: the processors are set
with ``unet.set_attn_processor`` and removed by restoring the previous ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .fusion import mgff, resize_mask

__all__ = ["SelfAttentionFusionProcessor", "SelfAttentionStore", "self_attention_fusion"]


@dataclass
class SelfAttentionStore:
    """Shared state of the fusion processors (one per restoration run).

    Attributes:
        mode: ``off``, ``capture`` or ``inject``.
        timestep: the key of the current UNet call (set before each call).
        mask: M_B ``(B, 1, H, W)`` at latent (or any) resolution; resized per layer.
        latent_hw: ``(H, W)`` of the UNet input, to recover each layer's ``(h, w)``.
        stats_region: see :func:`~.fusion.mgff`.
        cache_device: where captured features are kept (default: where they were computed).
        features: ``{(timestep, layer): (B, N, C)}`` captured features.
    """

    mode: Literal["off", "capture", "inject"] = "off"
    timestep: int = 0
    mask: torch.Tensor | None = None
    latent_hw: tuple[int, int] = (64, 64)
    stats_region: str = "global"
    cache_device: torch.device | str | None = None
    features: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    _masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def layer_hw(self, tokens: int) -> tuple[int, int]:
        """The ``(h, w)`` of a layer with ``tokens`` positions (the latent downsampled 2^k)."""
        h, w = self.latent_hw
        factor = round(math.sqrt(h * w / tokens))
        if factor < 1 or (h // factor) * (w // factor) != tokens:
            # odd sizes: diffusers' downsamplers round up
            for f in (2**k for k in range(8)):
                hh, ww = -(-h // f), -(-w // f)
                if hh * ww == tokens:
                    return hh, ww
            raise ValueError(f"cannot map {tokens} tokens onto a latent of {h}x{w}")
        return h // factor, w // factor

    def layer_mask(self, hw: tuple[int, int]) -> torch.Tensor:
        """M_B resized bilinearly to a layer's ``(h, w)``, cached per size."""
        if self.mask is None:
            raise RuntimeError("SelfAttentionStore: inject mode needs a mask")
        if hw not in self._masks:
            self._masks[hw] = resize_mask(self.mask, hw)
        return self._masks[hw]

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self.mask = mask
        self._masks = {}

    def clear(self) -> None:
        self.features.clear()
        self._masks = {}


class SelfAttentionFusionProcessor:
    """``attn1`` processor: plain attention (``AttnProcessor2_0``), then capture or MGFF."""

    def __init__(self, store: SelfAttentionStore, name: str):
        self.store = store
        self.name = name
        self.inner = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        store = self.store
        if store.mode == "off" or out.ndim != 3:
            return out
        key = (int(store.timestep), self.name)
        if store.mode == "capture":
            kept = out.detach()
            store.features[key] = (
                kept if store.cache_device is None else kept.to(store.cache_device)
            )
            return out
        cached = store.features[key].to(out.device, out.dtype)
        b, n, c = out.shape
        repeat = b // cached.shape[0]
        cached = cached.repeat(repeat, 1, 1)
        h, w = store.layer_hw(n)
        mask = store.layer_mask((h, w)).to(out.device, out.dtype)
        mask = mask.repeat(repeat, 1, 1, 1) if mask.shape[0] > 1 else mask

        def spatial(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(b, c, h, w)

        fused = mgff(spatial(out), spatial(cached), mask, store.stats_region)  # type: ignore[arg-type]
        return fused.reshape(b, c, n).transpose(1, 2)


@contextlib.contextmanager
def self_attention_fusion(unet: torch.nn.Module, store: SelfAttentionStore) -> Iterator[int]:
    """Set fusion processors on every ``attn1`` of ``unet`` for the block; yields their count.

    Other layers keep their processors; on exit every layer gets its previous processor back.
    """
    previous = dict(unet.attn_processors)
    new = {}
    count = 0
    for name, proc in previous.items():
        if name.endswith("attn1.processor"):
            new[name] = SelfAttentionFusionProcessor(store, name.removesuffix(".processor"))
            count += 1
        else:
            new[name] = proc
    unet.set_attn_processor(new)
    try:
        yield count
    finally:
        unet.set_attn_processor(previous)
