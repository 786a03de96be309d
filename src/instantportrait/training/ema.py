"""Exponential moving average of trainable weights (shadow copies kept in float32)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``shadow <- decay * shadow + (1 - decay) * param`` after every optimizer step."""

    def __init__(self, module: nn.Module, decay: float = 0.9999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {
            name: p.detach().float().clone()
            for name, p in module.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (e.g. a copy used for export)."""
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        for k in self.shadow:
            self.shadow[k] = state[k].float().to(self.shadow[k].device)
