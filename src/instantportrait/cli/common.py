"""Helpers shared by the CLI commands: device/dtype resolution and seeded generators."""

from __future__ import annotations

import argparse

import torch

from ..errors import InputError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N, mps or auto (default: cuda when available)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="float32, float16, bfloat16 or auto (default: float16 on CUDA, float32 elsewhere)",
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, then MPS, else CPU; anything else is validated."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 elsewhere (CPU half precision is slow)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InputError(f"--dtype: one of {', '.join(DTYPES)} or auto; got {name!r}")
    return DTYPES[name]


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator on the CPU seeded with ``seed`` (CPU noise is identical on every device)."""
    if seed is None:
        return None
    return torch.Generator("cpu").manual_seed(int(seed))


def quiet_libraries() -> None:
    """Silence diffusers'/transformers' own progress bars and info logs; ours stay."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
