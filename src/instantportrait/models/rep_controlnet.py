"""RepControlNet (FPGA §5): control at the base model's cost, by re-parameterisation.

Training time (:class:`RepControlNet`):

* every ``nn.Conv2d`` and ``nn.Linear`` of a frozen UNet (conv_in/out, resnet convs, time MLP,
  attention q/k/v/out, feed-forward, proj_in/out, up/down samplers; norms excluded) becomes a
  :class:`RepLayer`: ``y = Theta * x + Theta_m * x`` with biases ``b + b_m``, where the
  parallel trainable copy starts as ``Theta_m = w * Theta`` (Eq. 5, w = 0.1);
* a :class:`ConditionAdapter` (ControlNet-style hint encoder, zero-initialised output) encodes
  the condition image once per image; its output is **added** at the UNet's first layer: to
  the ``conv_in`` output (``inject_at="conv_in_output"``, default) or to the noisy latent
  (``"latent_input"``, paper-literal);
* the identity F_id enters through decoupled ID cross-attention (:class:`IDProjections`, used
  by FPGA's multi-ID processor on every ``attn2``:
  ``softmax(Q K_text) V_text + s sum_k M_k softmax(Q K_id^k) V_id^k``,
  new ``to_k_id``/``to_v_id`` initialised from ``to_k``/``to_v``); it is not re-parameterised.

After training, :meth:`RepControlNet.merge` folds every copy into the base weights,
``Theta' = alpha Theta + beta Theta_m`` (Eq. 6; alpha = beta = 1 is exactly the training-time
sum, as in RepVGG; beta is a control-strength knob), and returns a plain diffusers
``UNet2DConditionModel`` of the base's shapes. The only parameters beyond the base are the ID
projections and the adapter, which :class:`~..pipelines.rep_controlnet.RepControlNetPipeline`
applies.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..multi_id_attention import ExternalIDAttnProcessor, IDPassThroughAttnProcessor

__all__ = [
    "ConditionAdapter",
    "IDProjections",
    "RepControlNet",
    "RepLayer",
    "adapter_injection",
    "merge_weights",
    "set_id_processors",
]

InjectAt = Literal["conv_in_output", "latent_input"]


def merge_weights(
    base: torch.Tensor, branch: torch.Tensor, alpha: float = 1.0, beta: float = 1.0
) -> torch.Tensor:
    """Theta' = alpha * Theta + beta * Theta_m (FPGA Eq. 6), for weights and biases alike."""
    return alpha * base + beta * branch


class RepLayer(nn.Module):
    """A frozen conv/linear layer plus its parallel trainable copy (FPGA §5, Eq. 5).

    ``forward(x) = base(x) + branch(x)``; the branch starts as ``init_scale * base``.
    """

    def __init__(self, base: nn.Conv2d | nn.Linear, init_scale: float = 0.1):
        super().__init__()
        if not isinstance(base, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"RepLayer wraps nn.Conv2d or nn.Linear, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.branch = copy.deepcopy(base).requires_grad_(True)
        with torch.no_grad():
            for p in self.branch.parameters():
                p.mul_(init_scale)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base(x) + self.branch(x)

    def merged(self, alpha: float = 1.0, beta: float = 1.0) -> nn.Conv2d | nn.Linear:
        """A plain layer of the base's shape with the folded weights (Eq. 6)."""
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight.copy_(merge_weights(self.base.weight, self.branch.weight, alpha, beta))
            if out.bias is not None:
                out.bias.copy_(merge_weights(self.base.bias, self.branch.bias, alpha, beta))
        return out.requires_grad_(False)


class ConditionAdapter(ModelMixin, ConfigMixin):
    """ControlNet-style hint encoder: 3 -> 16 -> 32 -> 96 -> 256 (three stride-2 steps, so
    ``/8`` like the VAE), then a zero-initialised conv to ``out_channels`` (FPGA spec §5 [rec])."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 320,
        block_channels: tuple[int, ...] = (16, 32, 96, 256),
        inject_at: InjectAt = "conv_in_output",
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, block_channels[0], 3, padding=1)]
        for a, b in zip(block_channels[:-1], block_channels[1:]):
            layers += [nn.SiLU(), nn.Conv2d(a, a, 3, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(a, b, 3, padding=1, stride=2)]
        layers.append(nn.SiLU())
        self.body = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(block_channels[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """The residual for the UNet's first layer from a ``(B, 3, H, W)`` image in ``[0, 1]``."""
        return self.conv_out(self.body(condition))


class IDProjections(ModelMixin, ConfigMixin):
    """The decoupled ID attention's ``to_k_id``/``to_v_id`` of every ``attn2``, by layer name."""

    @register_to_config
    def __init__(self, layers: dict[str, list[int]] | None = None, id_dim: int = 768):
        super().__init__()
        self.to_k = nn.ModuleDict()
        self.to_v = nn.ModuleDict()
        for name, (inner_k, inner_v) in (layers or {}).items():
            key = name.replace(".", "__")
            self.to_k[key] = nn.Linear(id_dim, inner_k, bias=False)
            self.to_v[key] = nn.Linear(id_dim, inner_v, bias=False)

    @classmethod
    def for_unet(cls, unet: nn.Module, id_dim: int | None = None) -> IDProjections:
        """Projections for every ``attn2`` of ``unet``, initialised from its ``to_k``/``to_v``."""
        attns = {
            n: m
            for n, m in unet.named_modules()
            if isinstance(m, Attention) and n.endswith("attn2")
        }
        dim = id_dim or unet.config.cross_attention_dim
        layers = {
            n: [_plain(m.to_k).out_features, _plain(m.to_v).out_features] for n, m in attns.items()
        }
        proj = cls(layers=layers, id_dim=dim)
        with torch.no_grad():
            for n, m in attns.items():
                key = n.replace(".", "__")
                k, v = _plain(m.to_k), _plain(m.to_v)
                if k.in_features == dim:
                    proj.to_k[key].weight.copy_(k.weight)
                    proj.to_v[key].weight.copy_(v.weight)
        return proj


def _plain(layer: nn.Module) -> nn.Linear:
    return layer.base if isinstance(layer, RepLayer) else layer


def set_id_processors(unet: nn.Module, projections: IDProjections, scale: float = 1.0) -> int:
    """Put the decoupled ID attention on every ``attn2`` of ``unet``; returns how many.

    The processor is FPGA's multi-ID one (:class:`~..multi_id_attention.ExternalIDAttnProcessor`,
    projections referenced from ``projections``), so a merged model also takes ``id_masks``
    for several people. ``attn1`` layers get plain attention that accepts the ID keywords.
    """
    count = 0
    for name, module in unet.named_modules():
        key = name.replace(".", "__")
        plain = isinstance(module, Attention) and type(module.processor) is AttnProcessor2_0
        if plain and name.endswith("attn1") and len(projections.to_k):
            module.set_processor(IDPassThroughAttnProcessor())
        if isinstance(module, Attention) and name.endswith("attn2") and key in projections.to_k:
            module.set_processor(
                ExternalIDAttnProcessor(projections.to_k[key], projections.to_v[key], scale)
            )
            count += 1
    return count


@contextlib.contextmanager
def adapter_injection(
    unet: nn.Module, residual: torch.Tensor | None, inject_at: InjectAt
) -> Iterator[None]:
    """Add the adapter's ``residual`` at the UNet's first layer for the block.

    ``conv_in_output``: a forward hook on ``unet.conv_in`` adds it to that layer's output;
    ``latent_input``: a forward pre-hook adds it to the noisy latent entering ``conv_in``.
    Hooks are PyTorch's extension point and are removed on exit.
    """
    if residual is None:
        yield
        return
    if inject_at == "conv_in_output":
        handle = unet.conv_in.register_forward_hook(
            lambda module, args, output: output + _batched(residual, output)
        )
    else:
        handle = unet.conv_in.register_forward_pre_hook(
            lambda module, args: (args[0] + _batched(residual, args[0]), *args[1:])
        )
    try:
        yield
    finally:
        handle.remove()


def _batched(residual: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    r = residual.to(like.dtype)
    return r.repeat(like.shape[0] // r.shape[0], 1, 1, 1) if r.shape[0] != like.shape[0] else r


class RepControlNet(nn.Module):
    """The training-time two-branch model: RepLayers everywhere, the adapter, the ID attention.

    Args:
        unet: the base ``UNet2DConditionModel`` (frozen; modified in place: wrap a copy if the
            original is needed).
        init_scale: w of Eq. 5 (default 0.1).
        inject_at: where the adapter's output is added (see :func:`adapter_injection`).
        adapter_channels: the hint encoder's widths (default ControlNet's).
        id_dim: F_id's width (default the UNet's cross-attention width); 0 disables ID attention.
    """

    def __init__(
        self,
        unet: nn.Module,
        init_scale: float = 0.1,
        inject_at: InjectAt = "conv_in_output",
        adapter_channels: tuple[int, ...] = (16, 32, 96, 256),
        id_dim: int | None = None,
    ):
        super().__init__()
        unet.requires_grad_(False)
        self.id_projections = (
            IDProjections.for_unet(unet, id_dim) if id_dim != 0 else IDProjections(layers={})
        )
        self.unet = unet
        self.wrapped = wrap_rep_layers(unet, init_scale)
        out_ch = (
            unet.config.block_out_channels[0]
            if inject_at == "conv_in_output"
            else unet.config.in_channels
        )
        self.adapter = ConditionAdapter(
            out_channels=out_ch, block_channels=tuple(adapter_channels), inject_at=inject_at
        )
        set_id_processors(self.unet, self.id_projections)

    @property
    def inject_at(self) -> InjectAt:
        return self.adapter.config.inject_at

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The copies Theta_m, the adapter and the ID projections."""
        branches = [
            p for m in self.unet.modules() if isinstance(m, RepLayer) for p in m.branch.parameters()
        ]
        return [*branches, *self.adapter.parameters(), *self.id_projections.parameters()]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        condition: torch.Tensor,
        id_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """eps of the two-branch model for a condition image ``(B, 3, H, W)`` in ``[0, 1]``."""
        residual = self.adapter(condition.to(sample.dtype))
        kwargs = {"id_embeds": id_embeds} if len(self.id_projections.to_k) else None
        with adapter_injection(self.unet, residual, self.inject_at):
            return self.unet(
                sample, timestep, encoder_hidden_states, cross_attention_kwargs=kwargs
            ).sample

    @torch.no_grad()
    def merge(self, alpha: float = 1.0, beta: float = 1.0, *, inplace: bool = False):
        """A plain ``UNet2DConditionModel`` with ``Theta' = alpha Theta + beta Theta_m`` (Eq. 6).

        Every conv/linear has the base's shape; the ID processors (referencing this model's
        :attr:`id_projections`) are set on it; the adapter stays apart (:attr:`adapter`).
        ``inplace=True`` folds this model's own UNet (no copy: half the memory at real size;
        this wrapper is no longer a two-branch model afterwards).
        """
        merged = self.unet if inplace else copy.deepcopy(self.unet)
        for module in list(merged.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, RepLayer):
                    setattr(module, child_name, child.merged(alpha, beta))
        set_id_processors(merged, self.id_projections)
        return merged.requires_grad_(False)


def wrap_rep_layers(unet: nn.Module, init_scale: float = 0.1) -> int:
    """Replace every ``nn.Conv2d``/``nn.Linear`` of ``unet`` by a :class:`RepLayer`; count."""
    count = 0
    for module in list(unet.modules()):
        if isinstance(module, RepLayer):
            continue
        for child_name, child in list(module.named_children()):
            if type(child) in (nn.Conv2d, nn.Linear):
                setattr(module, child_name, RepLayer(child, init_scale))
                count += 1
    return count
