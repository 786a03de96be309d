"""The project's training layer: one loop on ``accelerate`` shared by every trainer.

A trainer (IDE-Net, IPNet, later FaceA-Net, FPGA, RepControlNet) subclasses :class:`Trainer`
and supplies its modules, optimizers, one ``training_step`` and an ``export``. The loop
here does the rest, the same way for all of them:

* ``accelerate`` (one CPU, one GPU, DDP/FSDP/DeepSpeed through ``accelerate launch``),
  mixed precision, gradient accumulation, gradient clipping;
* the data order from :class:`~instantportrait.training.sampler.ResumableSampler` and every
  step's noise/timesteps from a generator seeded by ``(seed, micro-step, rank)``, so a run
  resumed from a checkpoint continues exactly as if never stopped;
* checkpoints of the full state every N steps, the last K kept, atomically, in safetensors;
* a CSV + TensorBoard log of every loss term, a progress bar, validation every N steps;
* the inference-ready export and the resolved config saved in the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..io import atomic_write
from .checkpoint import load_checkpoint, prune_checkpoints, resolve_resume, save_checkpoint
from .config import check
from .ema import EMA
from .logger import MetricsLogger
from .sampler import ResumableSampler


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
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 1
    validate_every: int = 0
    num_workers: int = 0
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
        check(self.num_workers >= 0, "training.num_workers: must be >= 0")


def step_generator(seed: int, micro_step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one micro-step's randomness (noise, timesteps): a function of position."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(micro_step) * 7919 + int(rank)) % (2**63 - 1))
    return g


def build_accelerator(cfg: RunConfig):
    """An ``Accelerator`` configured from the run settings."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir),
    )


class Trainer:
    """Base class of every trainer. Subclasses implement the hooks marked below.

    Attributes set by subclasses in ``setup``: ``self.model`` (the main trainable module,
    the one EMA averages), ``self.dataset`` (indexable by ``(epoch, index)``), ``self.collate``.
    """

    #: the loss terms logged each step, in CSV column order
    log_keys: tuple[str, ...] = ("loss",)

    def __init__(self, config: Any, run: RunConfig, optim: OptimConfig):
        self.config, self.run, self.optim = config, run, optim
        self.run_dir = Path(run.output_dir)
        self.accelerator = build_accelerator(run)
        self.device = self.accelerator.device
        self.ema: EMA | None = None

    # ---- hooks --------------------------------------------------------------------------
    def setup(self) -> None:  # pragma: no cover - abstract
        """Build models, dataset and optimizers; call :meth:`prepare` at the end."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        """One micro-batch: forward, backward, optimizer steps (inside ``accumulate``); logs."""
        raise NotImplementedError  # pragma: no cover

    def export(self, folder: Path) -> None:  # pragma: no cover - abstract
        """Write the inference-ready result (a pipeline folder)."""
        raise NotImplementedError

    def validate(self, step: int) -> dict[str, float]:
        """Validation at ``step``; default none. Returns scalar metrics to log."""
        return {}

    def trainable(self) -> dict[str, nn.Module]:
        """Modules whose weights the checkpoint stores (name -> unwrapped module)."""
        return {"model": self.accelerator.unwrap_model(self.model)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"model": self.lr_scheduler}

    # ---- shared pieces ------------------------------------------------------------------
    def make_optimizer(self, params) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW and the LR schedule of :class:`OptimConfig`."""
        from diffusers.optimization import get_scheduler

        o = self.optim
        optimizer = torch.optim.AdamW(
            params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
        )
        scheduler = get_scheduler(
            o.lr_scheduler,
            optimizer,
            num_warmup_steps=o.warmup_steps,
            num_training_steps=self.run.max_steps,
        )
        return optimizer, scheduler

    def clip_and_step(self, loss: torch.Tensor, module: nn.Module, optimizer, scheduler) -> None:
        """Backward, clip at the sync step, optimizer and scheduler step, zero grads."""
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and self.optim.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(module.parameters(), self.optim.max_grad_norm)
        optimizer.step()
        if self.accelerator.sync_gradients:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _batches(self, sampler: ResumableSampler) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Batches with their (epoch, position); workers read by (epoch, index)."""

        class _Batches(torch.utils.data.Sampler):
            def __iter__(inner):
                for epoch, _, idx in sampler.batches():
                    yield [(epoch, i) for i in idx]

        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_Batches(),
            collate_fn=self.collate,
            num_workers=self.run.num_workers,
            persistent_workers=False,
        )
        positions = sampler.batches()
        for batch in loader:
            epoch, pos, _ = next(positions)
            yield epoch, pos, batch

    def save_config(self, resolved: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            text = json.dumps(resolved, indent=2)
            atomic_write(self.run_dir / "config.json", lambda p: p.write_text(text))

    # ---- the loop -----------------------------------------------------------------------
    def fit(self, resume: str | None = None, resolved_config: dict[str, Any] | None = None) -> Path:
        """Train to ``max_steps`` (resuming when asked), export to ``RUN/final``; returns it."""
        from tqdm.auto import tqdm

        acc, run = self.accelerator, self.run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.save_config(resolved_config or {})
        from accelerate.utils import set_seed

        set_seed(run.seed)  # new modules (heads, adapters) start the same in every run
        self.setup()
        if run.ema:
            self.ema = EMA(self.accelerator.unwrap_model(self.model), run.ema_decay)

        step, micro, epoch, position = 0, 0, 0, 0
        ckpt = resolve_resume(self.run_dir, resume)
        if ckpt is not None:
            state, ema_state = load_checkpoint(
                ckpt,
                modules=self.trainable(),
                optimizers=self.optimizers(),
                schedulers=self.schedulers(),
            )
            if self.ema is not None and ema_state is not None:
                self.ema.load_state_dict(ema_state)
            step, micro = state["step"], state["micro_step"]
            epoch, position = state["epoch"], state["position"]
            acc.print(f"resumed from {ckpt} at step {step}")

        sampler = ResumableSampler(
            len(self.dataset),
            run.batch_size,
            acc.process_index,
            acc.num_processes,
            seed=run.seed,
            start=(epoch, position),
        )
        logger = (
            MetricsLogger(
                self.run_dir, list(self.log_keys), resume_step=step, tensorboard=run.tensorboard
            )
            if acc.is_main_process
            else None
        )
        bar = tqdm(
            total=run.max_steps,
            initial=step,
            desc=f"train {type(self).__name__}",
            disable=not acc.is_local_main_process,
            unit="step",
        )
        window: list[dict[str, float]] = []
        batches = self._batches(sampler)
        while step < run.max_steps:
            epoch, position, batch = next(batches)
            gen = step_generator(run.seed, micro, acc.process_index, self.device)
            window.append(self.training_step(batch, gen))
            micro += 1
            position += 1  # the next batch to read
            if position >= sampler.batches_per_epoch:
                epoch, position = epoch + 1, 0
            if not acc.sync_gradients:
                continue
            step += 1
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.model))
            logs = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[0]}
            logs["lr"] = self.schedulers()["model"].get_last_lr()[0]
            window = []
            validating = bool(run.validate_every) and step % run.validate_every == 0
            if validating:
                logs.update(self.validate(step))
            if logger is not None and (step % run.log_every == 0 or validating):
                logger.log(step, logs)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in self.log_keys[:3]})
            bar.update(1)
            if (run.checkpoint_every and step % run.checkpoint_every == 0) or step == run.max_steps:
                self._checkpoint(step, micro, epoch, position, resolved_config)
        bar.close()
        if logger is not None:
            logger.close()
        final = self.run_dir / "final"
        if acc.is_main_process:
            self.export(final)
            text = json.dumps(resolved_config or {}, indent=2)
            atomic_write(final / "training_config.json", lambda p: p.write_text(text))
        acc.wait_for_everyone()
        return final

    def _checkpoint(self, step: int, micro: int, epoch: int, position: int, config) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(
                self.run_dir / "checkpoints" / f"step-{step:06d}",
                modules=self.trainable(),
                optimizers=self.optimizers(),
                schedulers=self.schedulers(),
                ema=None if self.ema is None else self.ema.state_dict(),
                state={
                    "step": step,
                    "micro_step": micro,
                    "epoch": epoch,
                    "position": position,
                    "world_size": acc.num_processes,
                    "config": config or {},
                },
            )
            prune_checkpoints(self.run_dir, self.run.keep_checkpoints)
        acc.wait_for_everyone()
