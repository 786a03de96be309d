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

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .sharding import is_dtensor

#: the folder of a checkpoint that holds a sharded EMA (``torch.distributed.checkpoint``)
SHARDED_DIR = "ema_sharded"


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

    @property
    def sharded(self) -> bool:
        """Whether the averaged parameters are FSDP2 shards (``DTensor``): the EMA is then
        checkpointed with :meth:`save_sharded`, not pickled by the main process alone."""
        return any(is_dtensor(s) for s in self.model.shadow_params)

    def _shadows(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.model.shadow_params))

    def save_sharded(self, folder: str | Path) -> None:
        """Collective: every process writes its shards of the averages with
        ``torch.distributed.checkpoint`` into ``folder/ema_sharded`` (which reshards on load:
        a run may resume on another number of processes); the main process adds the
        schedule's counters as ``schedule.json``."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        path = Path(folder) / SHARDED_DIR
        dcp.save(self._shadows(), checkpoint_id=str(path))
        if not dist.is_initialized() or dist.get_rank() == 0:
            schedule = {k: v for k, v in self.model.state_dict().items() if k != "shadow_params"}
            (path / "schedule.json").write_text(json.dumps(schedule, indent=2))

    def load_sharded(self, folder: str | Path) -> None:
        """Collective: the inverse of :meth:`save_sharded`, into this run's shard layout."""
        import torch.distributed.checkpoint as dcp

        path = Path(folder) / SHARDED_DIR
        if not (path / "schedule.json").is_file():
            from ..errors import InputError

            raise InputError(
                f"{folder}: no sharded EMA in this checkpoint (it was written by a run "
                "without FSDP or without training.ema; resume with the same settings)"
            )
        shadows = self._shadows()
        dcp.load(shadows, checkpoint_id=str(path))
        schedule = json.loads((path / "schedule.json").read_text())
        self.model.load_state_dict({**schedule, "shadow_params": list(shadows.values())})
        self.model.shadow_params = [p.float() for p in self.model.shadow_params]

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
        self.model.shadow_params = [p.float() for p in self.model.shadow_params]
