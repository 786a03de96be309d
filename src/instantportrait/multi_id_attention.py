"""Decoupled ID cross-attention and its mask-guided multi-ID form (FPGA eq. 1 and §3).

Every ``attn2`` of the ID-ControlNet gets an :class:`IDAttnProcessor` (RepControlNet's merged
UNet an :class:`ExternalIDAttnProcessor`, the same computation with projections it does not
own, :func:`decoupled_id_attention`): the text attention of
the layer plus, for each identity k, an attention of the same queries on that identity's
tokens F_id^k through new projections ``to_k_id`` / ``to_v_id`` (IP-Adapter-style decoupled
attention: two softmaxes), each weighted by its face-region mask downsampled to the layer::

    CA = CA(Q, F_text) + scale * sum_k  M_k↓ ⊙ CA(Q, F_id^k)

One identity without a mask is eq. (1) (an all-ones mask); no term exists outside every mask.
The identities and masks arrive as ``cross_attention_kwargs`` (``id_embeds``, ``id_masks``),
so diffusers' blocks carry them unchanged; :class:`IDPassThroughAttnProcessor` on ``attn1``
accepts and ignores them. An :class:`IDAttentionCapture` passed as ``id_capture`` records each
layer's ID-branch attention maps for the clone-face attention loss (eq. 2).

The same masked sum is what diffusers' IP-Adapter does with ``ip_adapter_masks``;
:func:`ip_adapter_multi_id_inputs` builds those inputs from our face masks, so the IP-Adapter
baseline of the paper's multi-ID table runs with exactly the same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

CfaSource = Literal["id_probs", "id_branch_output"]


def layer_hw(num_queries: int, aspect_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a layer with ``num_queries`` positions whose map has ``aspect_hw``'s aspect."""
    H, W = aspect_hw
    step = math.sqrt(H * W / num_queries)
    h = max(1, round(H / step))
    w = num_queries // h
    if h * w != num_queries:
        raise ValueError(f"{num_queries} positions do not form a {H}:{W} map")
    return h, w


def downsample_masks(masks: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Masks ``(B, K, H, W)`` resized (bilinear) to a layer of ``num_queries`` cells: ``(B, K, L)``.

    All-ones stays all-ones and all-zeros all-zeros (no overshoot, unlike bicubic).
    """
    h, w = layer_hw(num_queries, tuple(masks.shape[-2:]))
    if (h, w) != tuple(masks.shape[-2:]):
        masks = F.interpolate(masks.float(), size=(h, w), mode="bilinear", align_corners=False)
    return masks.flatten(2)


def multi_id_cross_attention(
    text_out: torch.Tensor, id_outs: torch.Tensor, masks: torch.Tensor | None, scale: float = 1.0
) -> torch.Tensor:
    """FPGA §3 (eq. 1 for one ID): ``CA(Q, F_text) + scale * Σ_k M_k ⊙ CA(Q, F_id^k)``.

    Args:
        text_out: ``(B, L, C)`` text-branch attention output.
        id_outs: ``(B, K, L, C)`` ID-branch outputs, one per identity.
        masks: ``(B, K, L)`` masks at the layer's resolution, or ``None`` (all ones).
    """
    if masks is None:
        return text_out + scale * id_outs.sum(dim=1)
    return text_out + scale * (masks.unsqueeze(-1).to(id_outs) * id_outs).sum(dim=1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


@dataclass
class IDAttentionCapture:
    """Collects ID-branch maps of every ID attention layer during one forward pass.

    ``source``: ``id_probs`` (head-averaged attention probabilities per ID token,
    ``(B, T, h, w)``, spec §2.4 default) or ``id_branch_output`` (the ID branch's output
    features ``(B, C, h, w)``). ``aspect_hw``: the latent's (h, w), to shape each layer's map.
    ``min_size``: layers whose shorter side is smaller are skipped (spec: >= 32×32 at 512²).
    """

    aspect_hw: tuple[int, int]
    source: CfaSource = "id_probs"
    min_size: int = 1
    maps: list[torch.Tensor] = field(default_factory=list)

    def wants(self, num_queries: int) -> bool:
        return min(layer_hw(num_queries, self.aspect_hw)) >= self.min_size

    def add(self, flat: torch.Tensor) -> None:
        """Record a ``(B, N, L)`` map (N tokens or channels) as ``(B, N, h, w)``."""
        h, w = layer_hw(flat.shape[-1], self.aspect_hw)
        self.maps.append(flat.reshape(*flat.shape[:2], h, w))


def _as_identities(id_embeds: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B, T, D)`` or ``(B, K, T, D)`` (B may be 1, broadcast) to ``(batch, K, T, D)``."""
    if id_embeds.ndim == 3:
        id_embeds = id_embeds.unsqueeze(1)
    if id_embeds.ndim != 4:
        raise ValueError(f"id_embeds: expected (B, T, D) or (B, K, T, D), got {id_embeds.shape}")
    if id_embeds.shape[0] != batch:
        if batch % id_embeds.shape[0]:
            raise ValueError(f"id_embeds: batch {id_embeds.shape[0]} does not divide {batch}")
        id_embeds = id_embeds.repeat_interleave(batch // id_embeds.shape[0], dim=0)
    return id_embeds


def _as_masks(masks: torch.Tensor, batch: int, k: int) -> torch.Tensor:
    if masks.ndim == 3:
        masks = masks.unsqueeze(0)
    if masks.ndim != 4 or masks.shape[1] != k:
        raise ValueError(f"id_masks: expected (B, {k}, H, W) for {k} identities, got {masks.shape}")
    if masks.shape[0] != batch:
        if batch % masks.shape[0]:
            raise ValueError(f"id_masks: batch {masks.shape[0]} does not divide {batch}")
        masks = masks.repeat_interleave(batch // masks.shape[0], dim=0)
    return masks


class IDPassThroughAttnProcessor(AttnProcessor2_0):
    """``attn1`` of the ID-ControlNet: plain attention that accepts and ignores the ID kwargs."""

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        id_embeds: torch.Tensor | None = None,
        id_masks: torch.Tensor | None = None,
        id_capture: IDAttentionCapture | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def decoupled_id_attention(
    attn: Attention,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    temb: torch.Tensor | None,
    to_k_id: nn.Linear,
    to_v_id: nn.Linear,
    scale: float,
    id_embeds: torch.Tensor | None = None,
    id_masks: torch.Tensor | None = None,
    id_capture: IDAttentionCapture | None = None,
) -> torch.Tensor:
    """One ``attn2`` with the decoupled, mask-guided ID term (module docstring; FPGA eq. 1, §3).

    The computation of both processors below; they differ only in who owns ``to_k_id`` /
    ``to_v_id``. ``id_embeds`` ``None`` (or ``scale`` 0) is the layer's plain text attention.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    batch, length, _ = hidden_states.shape
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)

    query = split_heads(attn.to_q(hidden_states), attn.heads)
    key = split_heads(attn.to_k(context), attn.heads)
    value = split_heads(attn.to_v(context), attn.heads)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
    out = merge_heads(out).to(query.dtype)

    if id_embeds is not None and scale != 0:
        ids = _as_identities(id_embeds.to(query.dtype), batch)
        k = ids.shape[1]
        masks = None
        if id_masks is not None:
            masks = downsample_masks(_as_masks(id_masks, batch, k), length)
        elif k > 1:
            raise ValueError(f"id_masks: {k} identities need one face mask each")
        capture = id_capture is not None and id_capture.wants(length)
        id_outs = []
        for i in range(k):
            id_key = split_heads(to_k_id(ids[:, i]), attn.heads)
            id_value = split_heads(to_v_id(ids[:, i]), attn.heads)
            if capture and id_capture.source == "id_probs":
                probs = (query @ id_key.transpose(-1, -2) * attn.scale).softmax(dim=-1)
                id_capture.add(probs.mean(dim=1).transpose(1, 2))  # (B, T, L)
                o = probs @ id_value
            else:
                o = F.scaled_dot_product_attention(query, id_key, id_value)
            o = merge_heads(o).to(query.dtype)
            if capture and id_capture.source == "id_branch_output":
                id_capture.add(o.transpose(1, 2))  # (B, C, L)
            id_outs.append(o)
        out = multi_id_cross_attention(out, torch.stack(id_outs, dim=1), masks, scale)

    out = attn.to_out[1](attn.to_out[0](out))
    if input_ndim == 4:
        out = out.transpose(-1, -2).reshape(b, c, h, w)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class _DecoupledIDCall:
    """The processor call of both holders below: :func:`decoupled_id_attention` with the
    holder's ``to_k_id``, ``to_v_id`` and ``scale``."""

    to_k_id: nn.Linear
    to_v_id: nn.Linear
    scale: float

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        id_embeds: torch.Tensor | None = None,
        id_masks: torch.Tensor | None = None,
        id_capture: IDAttentionCapture | None = None,
    ) -> torch.Tensor:
        return decoupled_id_attention(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb,
            self.to_k_id, self.to_v_id, self.scale, id_embeds, id_masks, id_capture,
        )  # fmt: skip


class IDAttnProcessor(_DecoupledIDCall, nn.Module):
    """Decoupled, mask-guided ID cross-attention for one ``attn2`` that owns its projections
    (the ID-ControlNet: they are saved with the model).

    Args:
        hidden_size: the layer's inner dimension (output of ``to_k``).
        cross_attention_dim: the ID tokens' width (768 for F_id).
        scale: weight of the ID term (spec: 1.0).
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, scale: float = 1.0):
        nn.Module.__init__(self)
        self.scale = scale
        self.to_k_id = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_id = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    @torch.no_grad()
    def init_from(self, attn: Attention) -> None:
        """Copy the layer's text ``to_k``/``to_v`` into ``to_k_id``/``to_v_id`` (spec §2.1)."""
        self.to_k_id.weight.copy_(attn.to_k.weight)
        self.to_v_id.weight.copy_(attn.to_v.weight)


class ExternalIDAttnProcessor(_DecoupledIDCall):
    """The same attention with projections owned elsewhere (RepControlNet's
    :class:`~instantportrait.models.rep_controlnet.IDProjections`): not a module, so the UNet it
    is set on keeps exactly the base's parameters and ``state_dict``."""

    def __init__(self, to_k_id: nn.Linear, to_v_id: nn.Linear, scale: float = 1.0):
        self.to_k_id, self.to_v_id, self.scale = to_k_id, to_v_id, scale


def install_id_processors(model: nn.Module, id_dim: int, scale: float = 1.0) -> None:
    """Put :class:`IDAttnProcessor` on every ``attn2`` and the pass-through on every ``attn1``.

    The processors become submodules, so their weights are in the model's ``state_dict``.
    """
    procs = {}
    for name in model.attn_processors:
        layer = name.rsplit(".processor", 1)[0]
        attn = model.get_submodule(layer)
        if name.endswith("attn2.processor"):
            procs[name] = IDAttnProcessor(attn.to_k.out_features, id_dim, scale)
        else:
            procs[name] = IDPassThroughAttnProcessor()
    model.set_attn_processor(procs)


def id_processors(model: nn.Module) -> dict[str, IDAttnProcessor | ExternalIDAttnProcessor]:
    """The model's ID processors (owning or external projections) by name."""
    kinds = (IDAttnProcessor, ExternalIDAttnProcessor)
    return {k: p for k, p in model.attn_processors.items() if isinstance(p, kinds)}


def set_id_scale(model: nn.Module, scale: float) -> None:
    """Set the ID term's weight in every ID processor (0 disables identity)."""
    for proc in id_processors(model).values():
        proc.scale = scale


def ip_adapter_multi_id_inputs(
    id_embeds: list[torch.Tensor],
    masks: torch.Tensor,
    do_classifier_free_guidance: bool = True,
) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
    """Inputs of a diffusers IP-Adapter pipeline for K identities in K face regions.

    Args:
        id_embeds: per identity, its image embedding as the pipeline's image projection
            expects it (e.g. ``(D,)`` for FaceID, ``(T, D)`` for a Plus adapter).
        masks: ``(K, H, W)`` face-region masks in [0, 1] at the output image's size.
    Returns:
        ``(ip_adapter_image_embeds, cross_attention_kwargs)``: pass them as
        ``pipe(..., ip_adapter_image_embeds=..., cross_attention_kwargs=...)``. The
        unconditional half (zeros) is prepended when ``do_classifier_free_guidance``.
    """
    if masks.ndim != 3 or masks.shape[0] != len(id_embeds):
        raise ValueError(f"masks: expected ({len(id_embeds)}, H, W), got {tuple(masks.shape)}")
    embeds = torch.stack(list(id_embeds)).unsqueeze(0)  # (1, K, ...)
    if do_classifier_free_guidance:
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
    return [embeds], {"ip_adapter_masks": [masks.unsqueeze(0).float()]}
