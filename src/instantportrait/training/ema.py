"""Exponential moving average of trainable weights, with diffusers' warm-up schedule.

A plain ``decay = 0.9999`` average over a 20k-step run keeps ``0.9999**20000 = 13.5%`` of the
*pretrained* weights in the export. diffusers' :class:`~diffusers.training_utils.EMAModel`
with ``use_ema_warmup`` ramps the decay as ``1 - (1 + step / inv_gamma) ** -power``, capped at
``decay``: with ``power = 3/4`` the decay is 0.99 after ~460 steps and 0.999 after ~10k
(Karras et al.'s / crowsonkb's warm-up), so early weights are forgotten quickly. This module
is a thin wrapper around ``EMAModel`` that tracks the trainable parameters of a module by
name and plugs into ``accelerator.register_for_checkpointing``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class EMA:
    """``shadow <- d_k * shadow + (1 - d_k) * param`` after each optimizer step ``k``.

    Args:
        module: the trained module; its parameters with ``requires_grad`` are averaged.
        decay: the largest decay (the schedule's cap).
        power / inv_gamma: the warm-up schedule ``d_k = 1 - (1 + k / inv_gamma) ** -power``.
        warmup: use the warm-up schedule (default); off: diffusers' ``(1 + k) / (10 + k)``.
    """

    def __init__(
        self,
        module: nn.Module,
        decay: float = 0.9999,
        power: float = 0.75,
        inv_gamma: float = 1.0,
        warmup: bool = True,
    ):
        from diffusers.training_utils import EMAModel

        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.model = EMAModel(
            [p for _, p in module.named_parameters() if p.requires_grad],
            decay=decay,
            use_ema_warmup=warmup,
            power=power,
            inv_gamma=inv_gamma,
        )
        # shadows in float32 whatever the training dtype
        self.model.shadow_params = [p.float() for p in self.model.shadow_params]

    def _params(self, module: nn.Module) -> list[torch.nn.Parameter]:
        named = dict(module.named_parameters())
        return [named[n] for n in self.names]

    @property
    def decay(self) -> float:
        return self.model.decay

    @property
    def last_decay(self) -> float | None:
        """The decay of the last update (None before the first)."""
        return self.model.cur_decay_value

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One EMA step after an optimizer step."""
        params = self._params(module)
        floats = [p.detach().float() for p in params]
        # EMAModel.step wants parameters with requires_grad to average them
        self.model.step([nn.Parameter(f, requires_grad=True) for f in floats])

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (e.g. a copy used for export)."""
        for p, s in zip(self._params(module), self.model.shadow_params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
        self.model.shadow_params = [p.float() for p in self.model.shadow_params]
