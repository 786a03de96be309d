"""Reading identity-embedder weight files: where they are, state dicts, strict loading.

Kept apart from :mod:`.embedders` (the registry by name) so the networks (:mod:`.facenet`,
:mod:`.arcface`) can read weights without importing the registry that imports them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelNotFoundError

__all__ = ["WEIGHT_HINTS", "load_into", "read_state_dict", "resolve_weights"]

#: What to provide, per embedder, in "weights not found" messages.
WEIGHT_HINTS = {
    "facenet": (
        "facenet-pytorch's VGGFace2 InceptionResnetV1 state dict "
        "(20180402-114759-vggface2.pt, or .safetensors)"
    ),
    "arcface": (
        "an insightface arcface_torch iresnet state dict (backbone.pth or .safetensors) "
        "or insightface's w600k_r50.onnx (buffalo_l)"
    ),
}


def resolve_weights(name: str, weights: str | os.PathLike | None) -> Path:
    """The weight file for ``name``: ``weights``, else ``INSTANTPORTRAIT_<NAME>_WEIGHTS``."""
    env = f"INSTANTPORTRAIT_{name.upper()}_WEIGHTS"
    hint = WEIGHT_HINTS.get(name, "a weight file")
    if weights is None:
        weights = os.environ.get(env) or None
    if weights is None:
        raise ModelNotFoundError(
            f"{name}: no weights given; pass weights=PATH (CLI: --weights PATH) or set {env} "
            f"to {hint}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: {name} weights not found; provide {hint}")
    return path


def read_state_dict(path: str | os.PathLike, what: str = "model") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pt``/``.pth`` read with ``weights_only``.

    Nested ``{"state_dict": ...}``/``{"model": ...}`` checkpoints are unwrapped and a DDP
    ``module.`` prefix is removed. Anything that is not a flat mapping of tensors is rejected
    with :class:`InputError`; no pickled code is ever executed.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"{p}: {what} weights not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise InputError(f"{p}: cannot read {what} weights ({first})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{p}: not a state dict of tensors ({what} weights)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_into(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    what: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state_dict`` into ``model`` strictly, with one clear line when it does not fit.

    Keys starting with ``ignore_prefixes`` (e.g. a classifier head) and missing BatchNorm
    ``num_batches_tracked`` counters are tolerated.
    """
    own = model.state_dict()
    sd = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} "
                f"vs {tuple(own[k].shape)})"
            )
        raise InputError(f"{source}: not a {what} state dict: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=False)
