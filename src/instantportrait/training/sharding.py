"""Training with the model sharded by FSDP2 (accelerate's ``fsdp_version: 2``): what changes.

Under FSDP2 every parameter of a prepared model is a ``DTensor`` that holds this process's
shard. Three things the trainers do differently then:

* reading whole weights (the export's adapters) is collective: every process gathers the
  same tensors in the same order (:func:`full_tensors`), and only the main process writes;
* a forward pass is collective: every process runs validation's edits, only the main
  process records them (:func:`runs_collectively`);
* state kept beside the model in the shards' layout (the EMA of a sharded adapter) is saved
  with ``torch.distributed.checkpoint``, which reshards on load, so a run may resume on a
  different number of processes (:class:`~instantportrait.training.ema.EMA`);
* accelerate's sharded checkpoint would save the whole model, frozen base included;
  :func:`checkpoint_only` keeps the trained part in it (the base is the pretrained folder's).

FSDP version 1 is refused (:func:`check_fsdp_version`): it flattens each wrapped unit into one
tensor of one dtype, and a FLUX block with LoRA mixes the frozen bf16 base with fp32 adapters.
FSDP2 shards each parameter on its own and all-gathers mixed dtypes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = [
    "check_fsdp_version",
    "checkpoint_only",
    "frozen",
    "full_tensors",
    "is_dtensor",
    "is_sharded",
    "runs_collectively",
    "whole_unit",
]

FSDP_CONFIG = "examples/accelerate/fsdp_kontext.yaml"


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (a shard of a parameter FSDP2 manages)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is sharded across processes (FSDP2)."""
    return any(is_dtensor(p) for p in module.parameters())


def runs_collectively(module: nn.Module, accelerator) -> bool:
    """Whether this process must run ``module``'s forward passes: always on the main process;
    on the others when the module is sharded (each forward all-gathers from every process)."""
    return accelerator.is_main_process or is_sharded(module)


@torch.no_grad()
def full_tensors(
    module: nn.Module, keep: Callable[[str], bool], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The whole tensors of ``module``'s parameters whose name ``keep`` accepts, on ``device``.

    Collective when the module is sharded: every process must call it with the same ``keep``
    (the parameters are gathered one by one in ``named_parameters`` order). Unsharded
    parameters are returned as detached copies."""
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if not keep(name):
            continue
        whole = p.full_tensor() if is_dtensor(p) else p
        out[name] = whole.detach().to(device, copy=True)
    return out


def check_fsdp_version(accelerator, what: str) -> None:
    """Refuse accelerate's FSDP version 1 for ``what`` with one line naming the fix."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise InputError(
            f"{what}: accelerate's FSDP version 1 cannot shard a block that mixes the frozen "
            "bf16 base with fp32 LoRA weights; set fsdp_version: 2 in the accelerate config "
            f"(see {FSDP_CONFIG})"
        )


@contextlib.contextmanager
def whole_unit(accelerator) -> Iterator[None]:
    """Prepare a model without transformer blocks (a discriminator) under FSDP2 as one unit.

    accelerate wraps the block classes the config names (or the model's ``_no_split_modules``)
    and refuses a model that has none of them; inside this context the plugin names no class,
    so the model is sharded at its root only. Elsewhere (no FSDP) it does nothing."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or not accelerator.is_fsdp2:
        yield
        return
    names = plugin.transformer_cls_names_to_wrap
    plugin.transformer_cls_names_to_wrap = []
    try:
        yield
    finally:
        plugin.transformer_cls_names_to_wrap = names


@contextlib.contextmanager
def frozen(params: nn.Module, root: nn.Module) -> Iterator[None]:
    """Run with ``params``' parameters frozen, then trainable again; ``root`` is the prepared
    module that holds them.

    FSDP2 copies each shard's ``requires_grad`` to the gathered parameter when it gathers, and
    keeps a root module gathered after its forward: a flag set on the gathered parameter is
    lost. So under FSDP2 the root is resharded before each change (its backward gathers it
    again), and the flags land on the shards."""
    reshard = getattr(root, "reshard", None) if is_sharded(root) else None
    if reshard is not None:
        reshard()
    params.requires_grad_(False)
    try:
        yield
    finally:
        if reshard is not None:
            reshard()
        params.requires_grad_(True)


def checkpoint_only(module: nn.Module, keep: Callable[[str], bool]) -> None:
    """From now on ``module``'s state dict holds only the entries whose name ``keep`` accepts,
    and loading one tolerates the others' absence (they keep their values).

    Under FSDP2, accelerate's ``save_state`` writes ``get_model_state_dict(model)`` (every
    parameter's shard) with ``torch.distributed.checkpoint``, and ``load_state`` reads back the
    keys of that same state dict, then loads it strictly. Filtering the state dict with torch's
    module hooks makes both hold the adapters only: a FLUX.1 Kontext checkpoint shrinks from the
    whole 24 GB transformer to its LoRA weights. ``keep`` sees names relative to ``module``,
    the module whose ``state_dict`` accelerate takes (FSDP2 shards it in place)."""

    def drop(mod: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for key in [k for k in state if k.startswith(prefix) and not keep(k[len(prefix) :])]:
            del state[key]

    def tolerate(mod: nn.Module, incompatible: Any) -> None:
        missing = incompatible.missing_keys
        missing[:] = [k for k in missing if keep(k)]

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_post_hook(tolerate)
