"""The project's training layer: one loop on ``accelerate`` shared by every trainer.

A trainer (IDE-Net, IPNet, later FaceA-Net, FPGA, RepControlNet) subclasses :class:`Trainer`
and supplies its modules, optimizers, one ``training_step`` and an ``export``. The loop
here does the rest, the same way for all of them:

* ``accelerate`` (one CPU, one GPU, DDP/FSDP/DeepSpeed through ``accelerate launch``),
  mixed precision, gradient accumulation, gradient clipping;
* the data order from :class:`~instantportrait.training.sampler.ResumableSampler` and every
  step's noise/timesteps from a generator seeded by ``(seed, micro-step, rank)``, so a run
  resumed from a checkpoint continues exactly as if never stopped;
* checkpoints of the full training state every N steps through ``accelerator.save_state``
  (the progress and the EMA registered for checkpointing), the last K kept, atomically;
* a CSV + TensorBoard log of every loss term, a progress bar, validation every N steps;
* the inference-ready export (safetensors) and the resolved config saved in the run folder.

The settings and the ``Accelerator`` come from :mod:`~instantportrait.training.run_settings`.
The run folder follows the one writer policy (:func:`instantportrait.writer.prepare_output`): a
used folder is refused unless the run resumes or overwrites, and nothing is written into it
before set-up (models, data) has succeeded.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..writer import atomic_write, prepare_output
from .checkpoint import (
    Progress,
    load_training_state,
    prune_checkpoints,
    resolve_resume,
    save_training_state,
)
from .ema import EMA
from .logger import MetricsLogger
from .run_settings import (
    OptimConfig,
    RunConfig,
    build_accelerator,
    check_batch_fits,
    choose_precision,
    resolve_num_workers,
)
from .sampler import ResumableSampler

__all__ = ["FaceCoverage", "OptimConfig", "RunConfig", "Trainer", "step_generator"]


def step_generator(seed: int, micro_step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one micro-step's randomness (noise, timesteps): a function of position."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(micro_step) * 7919 + int(rank)) % (2**63 - 1))
    return g


class FaceCoverage:
    """Counts how many samples a face-based loss term saw; warns once when (almost) none.

    Args:
        term: the term's name in the warning (``identity``, ``triplet``).
        after: samples to see before judging (or the run's end, whichever comes first).
        minimum: the face fraction below which it warns.
    """

    def __init__(self, term: str, after: int = 32, minimum: float = 0.1):
        self.term, self.after, self.minimum = term, after, minimum
        self.faces = self.seen = 0
        self.warned = False

    @property
    def fraction(self) -> float:
        return self.faces / self.seen if self.seen else 0.0

    def update(self, faces: int, total: int) -> None:
        """Add one micro-batch's counts."""
        self.faces += int(faces)
        self.seen += int(total)

    def check(self, last: bool = False) -> bool:
        """Warn (once) when enough samples were seen, or at the run's end, and the face fraction
        is below ``minimum``; returns True when this call warned."""
        if self.warned or not self.seen or not (self.seen >= self.after or last):
            return False
        if self.fraction >= self.minimum:
            self.warned = True  # judged: enough faces
            return False
        self.warned = True
        warnings.warn(
            f"the {self.term} term saw a face in {self.faces} of {self.seen} samples "
            f"(face fraction {self.fraction:.2f}): it is (almost) off. Check the data "
            "(`instantportrait data check`) or raise data.resolution so faces are found",
            UserWarning,
            stacklevel=2,
        )
        return True


class Trainer:
    """Base class of every trainer. Subclasses implement the hooks marked below.

    Attributes set by subclasses in ``setup``: ``self.model`` (the main trainable module,
    the one EMA averages), ``self.dataset`` (indexable by ``(epoch, index)``), ``self.collate``.
    """

    #: the loss terms logged each step, in CSV column order
    log_keys: tuple[str, ...] = ("loss",)
    #: show the step progress bar (a caller with its own progress, e.g. evaluate, turns it off)
    progress_bar: bool = True

    def __init__(self, config: Any, run: RunConfig, optim: OptimConfig):
        self.config, self.run, self.optim = config, run, optim
        self.run_dir = Path(run.output_dir)
        #: the precision this run uses (``no``, ``bf16``, ``fp16``); for ``auto`` the line that
        #: says which was chosen
        self.precision, self.precision_note = choose_precision(run.mixed_precision)
        self.accelerator = build_accelerator(run, self.precision)
        self.device = self.accelerator.device
        self.ema: EMA | None = None
        #: set by a trainer whose loss needs faces (identity, triplet terms)
        self.coverage: FaceCoverage | None = None

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
        """Validation at ``step`` (every process calls it); default none. Returns scalar
        metrics to log (the main process's count)."""
        return {}

    def collect_export(self) -> None:
        """Every process, before the main process's :meth:`export`: gather what the export
        needs from a model sharded across processes (default: nothing to gather)."""

    @classmethod
    def count_examples(cls, config: Any) -> int | None:
        """The training examples of ``config``'s dataset, counted cheaply before any model
        loads (``None``: not known before set-up, or never short of a batch)."""
        return None

    def check_inputs(self) -> None:
        """The inputs a run needs (``data.path`` ...) are given: the config's ``check_inputs``.

        Kept out of the configs' construction so that ``--dry-run`` prints the settings
        without them."""
        check_config = getattr(self.config, "check_inputs", None)
        if check_config is not None:
            check_config()

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

    def clip_and_step(
        self, loss: torch.Tensor | None, module: nn.Module, optimizer, scheduler
    ) -> None:
        """Backward, clip at the sync step, optimizer and scheduler step, zero grads.

        ``loss=None``: the gradients are already there (e.g. one backward per loss term)."""
        if loss is not None:
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

        workers, note = resolve_num_workers(self.run.num_workers, self.accelerator.num_processes)
        if note is not None:
            self.accelerator.print(note)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_Batches(),
            collate_fn=self.collate,
            num_workers=workers,
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

    def check_run_dir(self, resume: str | None, overwrite: bool) -> Path | None:
        """The output-folder policy, checked before anything is built or written.

        A used run folder is refused unless the run resumes (``--resume``) or replaces it
        (``--overwrite``, removed only once set-up has succeeded). ``--resume latest`` with no
        checkpoint in the folder says so and starts fresh. Returns the checkpoint to resume.
        """
        if resume is not None and overwrite:
            raise InputError("--resume and --overwrite: choose one")
        if resume is None:
            if not overwrite:  # every process reaches the same answer before anyone writes
                prepare_output(self.run_dir, overwrite=False)
            return None
        ckpt = resolve_resume(self.run_dir, resume)
        if ckpt is None:
            where = self.run_dir
            self.accelerator.print(f"--resume latest: no checkpoint in {where}; starting fresh")
        return ckpt

    def _write_run_dir(self, replace: bool, resolved: dict[str, Any] | None) -> None:
        """After set-up succeeded: replace the old folder (``--overwrite``), create, save config."""
        acc = self.accelerator
        if acc.is_main_process:
            if replace:
                prepare_output(self.run_dir, overwrite=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        self.save_config(resolved or {})

    def _register_state(self) -> Progress:
        """The objects accelerate saves beside models/optimizers: progress (and EMA)."""
        acc = self.accelerator
        progress = Progress(world_size=acc.num_processes)
        acc.register_for_checkpointing(progress)
        ema = self.ema
        if ema is not None and ema.sharded:
            # an EMA of FSDP2 shards: every process saves its shards (accelerate pickles a
            # registered object on the main process only)
            acc.register_save_state_pre_hook(lambda models, weights, out: ema.save_sharded(out))
            acc.register_load_state_pre_hook(lambda models, folder: ema.load_sharded(folder))
        elif ema is not None:
            acc.register_for_checkpointing(ema)
        return progress

    # ---- the loop -----------------------------------------------------------------------
    def fit(
        self,
        resume: str | None = None,
        resolved_config: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Train to ``max_steps`` (resuming when asked), export to ``RUN/final``; returns it."""
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        acc, run = self.accelerator, self.run
        self.check_inputs()
        ckpt = self.check_run_dir(resume, overwrite)
        # a dataset short of one batch is refused before any model loads (and again on the
        # built dataset), never after the run folder is written
        examples = self.count_examples(self.config)
        if examples is not None:
            check_batch_fits(examples, run.batch_size, acc.num_processes)
        if self.precision_note is not None:
            acc.print(self.precision_note)
        set_seed(run.seed)  # new modules (heads, adapters) start the same in every run
        self.setup()
        check_batch_fits(len(self.dataset), run.batch_size, acc.num_processes)
        if run.ema:
            self.ema = EMA(
                acc.unwrap_model(self.model),
                run.ema_decay,
                power=run.ema_power,
                warmup=run.ema_warmup,
            )
        progress = self._register_state()
        if ckpt is not None:
            load_training_state(acc, ckpt)
            acc.print(f"resumed from {ckpt} at step {progress.step}")
        # set-up succeeded: only now is the run folder written
        self._write_run_dir(overwrite and resume is None, resolved_config)
        step = progress.step

        sampler = ResumableSampler(
            len(self.dataset),
            run.batch_size,
            acc.process_index,
            acc.num_processes,
            seed=run.seed,
            start=(progress.epoch, progress.position),
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
            disable=not (acc.is_local_main_process and self.progress_bar),
            unit="step",
        )
        window: list[dict[str, float]] = []
        batches = self._batches(sampler)
        first_logged = step > 0
        while progress.step < run.max_steps:
            epoch, position, batch = next(batches)
            gen = step_generator(run.seed, progress.micro_step, acc.process_index, self.device)
            with acc.autocast():
                window.append(self.training_step(batch, gen))
            progress.micro_step += 1
            progress.epoch, progress.position = epoch, position + 1  # the next batch to read
            if progress.position >= sampler.batches_per_epoch:
                progress.epoch, progress.position = epoch + 1, 0
            if not acc.sync_gradients:
                continue
            progress.step += 1
            step = progress.step
            if self.ema is not None:
                self.ema.update(acc.unwrap_model(self.model))
            logs = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[0]}
            logs["lr"] = self.schedulers()["model"].get_last_lr()[0]
            window = []
            self.check_coverage(last=step == run.max_steps)
            validating = bool(run.validate_every) and step % run.validate_every == 0
            if validating:
                logs.update(self.validate(step))
            due = step % run.log_every == 0 or validating or not first_logged
            if logger is not None and (due or step == run.max_steps):
                logger.log(step, logs)
                first_logged = True
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in self.log_keys[:3]})
            bar.update(1)
            if (run.checkpoint_every and step % run.checkpoint_every == 0) or step == run.max_steps:
                self._checkpoint(progress, resolved_config)
        bar.close()
        if logger is not None:
            logger.close()
        final = self.run_dir / "final"
        self.collect_export()
        if acc.is_main_process:
            self.export(final)
            text = json.dumps(resolved_config or {}, indent=2)
            atomic_write(final / "training_config.json", lambda p: p.write_text(text))
        acc.wait_for_everyone()
        return final

    def check_coverage(self, last: bool = False) -> None:
        """Warn once when a face-based term saw (almost) no faces (see :class:`FaceCoverage`)."""
        if self.coverage is not None:
            self.coverage.check(last)

    def _checkpoint(self, progress: Progress, config) -> None:
        save_training_state(
            self.accelerator,
            self.run_dir / "checkpoints" / f"step-{progress.step:06d}",
            progress,
            config,
        )
        if self.accelerator.is_main_process:
            prune_checkpoints(self.run_dir, self.run.keep_checkpoints)
        self.accelerator.wait_for_everyone()
