"""Where and in what precision the toolkit computes: device and dtype names, seeded noise.

The library's own parsing of ``--device`` / ``--dtype`` values (the CLI and every entry point
use it; the library never imports the CLI). A device that this machine does not have is an
:class:`~instantportrait.errors.InputError` naming it, never an internal error later.
"""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = [
    "DTYPES",
    "available_devices",
    "diffusers_dtype",
    "resolve_device",
    "resolve_dtype",
    "seeded_generator",
]

#: Accepted dtype names (long and short forms).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The device names this machine offers: ``cpu``, then ``cuda:N`` and ``mps`` if present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device, *, flag: str = "--device") -> torch.device:
    """``auto`` is CUDA when available, then MPS, else CPU; any other name is checked.

    Raises:
        InputError: for an unknown device name, or one this machine does not have (CUDA
            absent or index out of range, MPS absent, another backend absent).
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(
            f"{flag}: unknown device {name!r}; this machine has {', '.join(available_devices())}"
        ) from None
    have = ", ".join(available_devices())
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {name}: CUDA is not available here (devices: {have})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"{flag} {name}: there are {torch.cuda.device_count()} CUDA devices ({have})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise InputError(f"{flag} {name}: MPS (Apple GPU) is not available here ({have})")
        return device
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if not (callable(is_available) and is_available()):
        raise InputError(f"{flag} {name}: {device.type} is not available here ({have})")
    return device


def resolve_dtype(
    name: str | torch.dtype, device: torch.device, *, flag: str = "--dtype"
) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 elsewhere (CPU half precision is slow)."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"{flag}: one of {', '.join(DTYPES)} or auto; got {name!r}")
    return DTYPES[name]


def seeded_generator(
    seed: int | None, device: torch.device | None = None
) -> torch.Generator | None:
    """A CPU generator seeded with ``seed`` (CPU noise is identical on every device)."""
    if seed is None:
        return None
    return torch.Generator("cpu").manual_seed(int(seed))


def diffusers_dtype(dtype: torch.dtype | None) -> dict[str, torch.dtype]:
    """The ``from_pretrained`` keyword that sets a diffusers model's dtype: ``dtype`` where the
    installed diffusers takes it (``torch_dtype`` is deprecated there and warns on every
    load), ``torch_dtype`` in older releases. Empty for ``None``."""
    if dtype is None:
        return {}
    from diffusers.utils import deprecation_utils

    supports_dtype = hasattr(deprecation_utils, "_resolve_dtype")
    return {"dtype": dtype} if supports_dtype else {"torch_dtype": dtype}
