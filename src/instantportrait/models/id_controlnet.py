"""FPGA's ID-ControlNet: diffusers' ``ControlNetModel`` with decoupled ID cross-attention.

Spec §2.1: a standard ControlNet (a copy of the SD1.5 UNet's encoder and mid block, zero
convolutions, residuals added to the frozen UNet's skips) conditioned on a skeleton and/or
landmark image, in which every cross-attention layer (``attn2``) also attends to the
identity tokens F_id (4 × 768) through its own ``to_k_id``/``to_v_id`` (eq. 1)::

    CA^C = CA^C(Q_C, F_text) + CA^C(Q_C, F_id)

The frozen UNet sees text only: identity reaches it through the residuals. The ID branch is
an attention processor (:class:`~instantportrait.multi_id_attention.IDAttnProcessor`)
installed by ``__init__``, so its weights are part of the model's ``state_dict`` and
``save_pretrained``/``from_pretrained`` round-trip them; ``id_embeds`` (and, for several
identities, ``id_masks``) are arguments of :meth:`IDControlNetModel.forward`.
:meth:`IDControlNetModel.from_unet` initialises from any SD1.5-architecture UNet, with the
ID projections copied from each layer's text ``to_k``/``to_v`` (spec [rec]).

Replacing the attention processors (``set_attn_processor``, ``set_default_attn_processor``)
removes the ID branch with them: use the model's own processors.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (see below)

from ..multi_id_attention import (
    IDAttentionCapture,
    id_processors,
    install_id_processors,
    set_id_scale,
)


def _init(self, id_dim: int = 768, id_scale: float = 1.0, **controlnet_kwargs: Any) -> None:
    """Every ``ControlNetModel`` argument, plus ``id_dim`` (F_id's width) and ``id_scale``."""
    ControlNetModel.__init__(self, **controlnet_kwargs)
    install_id_processors(self, id_dim, id_scale)


def _signature() -> inspect.Signature:
    """``ControlNetModel.__init__``'s parameters followed by the ID ones (for the config)."""
    params = list(inspect.signature(ControlNetModel.__init__).parameters.values())
    extra = [
        inspect.Parameter("id_dim", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=768),
        inspect.Parameter("id_scale", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1.0),
    ]
    return inspect.Signature(params + extra)


_init.__signature__ = _signature()  # type: ignore[attr-defined]


# diffusers' pipeline loader finds a custom component's loading method by looking
# ``ModelMixin`` up in the component's module: the import above is what it finds.


class IDControlNetModel(ControlNetModel):
    """A ``ControlNetModel`` whose every ``attn2`` also attends to identity tokens (eq. 1).

    Configured by all of ``ControlNetModel``'s arguments plus ``id_dim`` (width of F_id,
    768) and ``id_scale`` (weight of the ID term, 1.0).
    """

    __init__ = register_to_config(_init)

    @classmethod
    def from_unet(  # type: ignore[override]
        cls,
        unet: UNet2DConditionModel,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
        id_dim: int | None = None,
        id_scale: float = 1.0,
    ) -> IDControlNetModel:
        """An ID-ControlNet initialised from ``unet`` (any SD1.5-architecture UNet).

        The ControlNet part is diffusers' own ``ControlNetModel.from_unet`` (encoder and mid
        block copied, zero convolutions); each ID projection starts as a copy of its layer's
        text ``to_k``/``to_v``. ``id_dim`` defaults to the UNet's cross-attention width.
        """
        base = ControlNetModel.from_unet(
            unet,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            load_weights_from_unet=load_weights_from_unet,
            conditioning_channels=conditioning_channels,
        )
        config = {k: v for k, v in base.config.items() if not k.startswith("_")}
        model = cls(**config, id_dim=id_dim or unet.config.cross_attention_dim, id_scale=id_scale)
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        del base
        if unexpected or any(".processor." not in k for k in missing):
            raise RuntimeError(f"ID-ControlNet init: unexpected {unexpected}, missing {missing}")
        if id_dim in (None, unet.config.cross_attention_dim):
            for name, proc in id_processors(model).items():
                proc.init_from(model.get_submodule(name.rsplit(".processor", 1)[0]))
        return model if model.dtype == unet.dtype else model.to(unet.dtype)

    def set_id_scale(self, scale: float) -> None:
        """Weight of the ID term in every layer (0 turns identity off)."""
        set_id_scale(self, scale)

    def id_parameters(self) -> list[torch.nn.Parameter]:
        """The ID projections' parameters (``to_k_id``/``to_v_id`` of every layer)."""
        return [p for proc in id_processors(self).values() for p in proc.parameters()]

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        id_embeds: torch.Tensor | None = None,
        id_masks: torch.Tensor | None = None,
        id_capture: IDAttentionCapture | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """``ControlNetModel.forward`` with the identity: ``id_embeds`` ``(B, T, D)`` for one
        identity or ``(B, K, T, D)`` for K, ``id_masks`` ``(B|1, K, H, W)`` (any resolution
        with the latent's aspect; required for K > 1), ``id_capture`` to record the ID maps of
        the clone-face attention loss. ``id_embeds=None``: no identity term."""
        cak = dict(cross_attention_kwargs or {})
        cak.update(id_embeds=id_embeds, id_masks=id_masks, id_capture=id_capture)
        return super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            controlnet_cond,
            conditioning_scale,
            cross_attention_kwargs=cak,
            **kwargs,
        )
