"""The settings every trainer shares and what is decided from them before training starts:
the optimizer and run settings (:class:`OptimConfig`, :class:`RunConfig`), the data-loading
workers the machine can feed, the check that a dataset fills one batch, the precision
(``auto``: bf16 only on a CUDA GPU that runs it fast) and the ``Accelerator`` built from them.
The loop that uses them is :mod:`~instantportrait.training.loop`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError
from .config import check


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (diffusers' ``get_scheduler`` names)."""

    lr: float = 1e-5
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant_with_warmup"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr: must be positive, got {self.lr}")
        check(self.warmup_steps >= 0, "optim.warmup_steps: must be >= 0")
        check(self.max_grad_norm >= 0, "optim.max_grad_norm: must be >= 0 (0 disables clipping)")


@dataclass
class RunConfig:
    """Settings every trainer shares."""

    output_dir: str = "runs/run"
    max_steps: int = 1000
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    #: ``auto``: bf16 where the device runs it fast (a CUDA GPU with bf16), else fp32 (``no``;
    #: the library's default: half precision is opt-in; the shipped trainer configs say auto)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    #: the EMA's largest decay; it is reached through diffusers' warm-up schedule
    #: ``1 - (1 + k) ** -ema_power`` (``ema_warmup``), so early weights are forgotten quickly
    ema_decay: float = 0.9999
    ema_power: float = 0.75
    ema_warmup: bool = True
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 1
    validate_every: int = 0
    #: data-loading processes; ``None``: from the machine (its CPUs per training process - 1,
    #: at most 8); a number is capped at what the machine has (see :func:`resolve_num_workers`)
    num_workers: int | None = None
    tensorboard: bool = True
    allow_tf32: bool = True

    def __post_init__(self) -> None:
        check(self.max_steps >= 1, "training.max_steps: must be at least 1")
        check(self.batch_size >= 1, "training.batch_size: must be at least 1")
        check(
            self.gradient_accumulation_steps >= 1,
            "training.gradient_accumulation_steps: must be at least 1",
        )
        check(
            self.checkpoint_every >= 0,
            "training.checkpoint_every: must be >= 0 (0: only at the end)",
        )
        check(self.keep_checkpoints >= 1, "training.keep_checkpoints: must be at least 1")
        check(self.log_every >= 1, "training.log_every: must be at least 1")
        check(0.0 < self.ema_decay < 1.0, "training.ema_decay: must be in (0, 1)")
        check(self.ema_power > 0, "training.ema_power: must be positive")
        check(
            self.num_workers is None or self.num_workers >= 0,
            "training.num_workers: must be >= 0 (or null: from the machine)",
        )


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_num_workers(processes: int = 1) -> int:
    """Data-loading workers for one training process: its share of the CPUs minus one, <= 8."""
    return max(0, min(8, _cpus() // max(1, processes) - 1))


def resolve_num_workers(configured: int | None, processes: int = 1) -> tuple[int, str | None]:
    """The data-loading workers a run uses, and a note when it differs from the setting.

    ``None`` takes :func:`default_num_workers`. A number larger than the machine can feed
    (its CPUs per training process, minus the one the training process itself needs) is
    capped there: more workers than cores only make them compete with the training step.
    """
    if configured is None:
        return default_num_workers(processes), None
    cap = max(0, _cpus() // max(1, processes) - 1)
    if configured <= cap:
        return configured, None
    return cap, (
        f"training.num_workers={configured}: this machine has {_cpus()} CPUs for "
        f"{processes} training process(es); using {cap} data-loading workers"
    )


def check_batch_fits(examples: int, batch_size: int, processes: int = 1) -> None:
    """Refuse, with one line saying what to change, a dataset smaller than one global batch.

    The loop's sampler drops an epoch's last incomplete batch, so ``examples`` must be at
    least ``batch_size x processes`` (the micro-batch of every process).
    """
    if examples >= batch_size * processes:
        return
    across = f" x {processes} processes" if processes > 1 else ""
    fits = examples // processes
    fix = (
        f"use --set training.batch_size={fits} or a bigger dataset"
        if fits >= 1
        else "use a bigger dataset or fewer processes"
    )
    raise InputError(
        f"data.path: {examples} example{'s' if examples != 1 else ''}, fewer than one batch "
        f"(training.batch_size={batch_size}{across}); {fix}"
    )


def resolve_precision(mixed_precision: str, device: torch.device) -> tuple[str, str | None]:
    """The precision a run uses on ``device`` (``no``, ``bf16``, ``fp16``) and, for ``auto``,
    the line that says which it chose.

    ``auto`` is bf16 on a CUDA GPU that supports it and fp32 (``no``) elsewhere: bf16 autocast
    on a CPU is correct but runs far slower than fp32 (measured ~100x on an IPNet step), so it
    is never chosen there. An explicit setting wins: bf16 on a CPU warns, fp16 on a CPU is
    refused with one line naming the setting.
    """
    if mixed_precision == "auto":
        fast_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        if fast_bf16:
            return (
                "bf16",
                "precision: bf16 autocast (training.mixed_precision=auto, CUDA with bf16)",
            )
        return "no", (
            f"precision: fp32 (training.mixed_precision=auto on {device.type}: "
            "bf16 is chosen only on a CUDA GPU that supports it)"
        )
    if mixed_precision == "fp16" and device.type == "cpu":
        raise InputError(
            "training.mixed_precision=fp16: needs a GPU, and this run is on the CPU "
            "(use auto, no or bf16)"
        )
    if mixed_precision == "bf16" and device.type == "cpu":
        warnings.warn(
            "training.mixed_precision=bf16 on the CPU: bf16 autocast runs far slower than fp32 "
            "on most CPUs (~100x measured); use auto or no unless your CPU is known fast in bf16",
            UserWarning,
            stacklevel=2,
        )
    return mixed_precision, None


def launch_device() -> torch.device:
    """The device type the run's ``Accelerator`` will use (CUDA unless there is none or
    ``ACCELERATE_USE_CPU`` is set), read without building accelerate's state: that state is a
    per-process singleton, and building it before the ``Accelerator`` would fix it without the
    launcher's settings."""
    from accelerate.utils import parse_flag_from_env

    if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU"):
        return torch.device("cuda")
    return torch.device("cpu")


def choose_precision(mixed_precision: str) -> tuple[str, str | None]:
    """``auto`` decided for :func:`launch_device` (with the line that says so); an explicit
    setting as it is (checked on the accelerator's device by :func:`build_accelerator`)."""
    if mixed_precision != "auto":
        return mixed_precision, None
    return resolve_precision("auto", launch_device())


def build_accelerator(cfg: RunConfig, precision: str | None = None):
    """An ``Accelerator`` configured from the run settings at ``precision`` (``no``, ``bf16``,
    ``fp16``; default: :func:`choose_precision` of ``cfg.mixed_precision``), checked on its
    device (:func:`resolve_precision`: fp16 on a CPU refused, bf16 on a CPU warned)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision is None:
        precision, _ = choose_precision(cfg.mixed_precision)
    # accelerate's state is a per-process singleton; a second trainer in the same process
    # (tests, a library user) may ask for another precision: only then start it afresh
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=precision,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir),
    )
    resolve_precision(precision, accelerator.device)
    return accelerator
