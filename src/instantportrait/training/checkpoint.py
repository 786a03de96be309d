"""Training-state checkpoints through accelerate: ``save_state`` / ``load_state``.

A checkpoint folder ``RUN/checkpoints/step-000123/`` is what ``accelerator.save_state`` writes
(so FSDP and DeepSpeed sharded states work the same as one device or DDP):

* the prepared models' weights as safetensors (``model.safetensors``, ``model_1.safetensors``
  for a second model such as IPNet's discriminator),
* the optimizers' and LR schedulers' states, the RNG states of every process and the objects
  registered with ``accelerator.register_for_checkpointing`` (the training progress: step,
  data position; the EMA weights). accelerate keeps these in its own pickle-based files:
  they are *training state* a user writes and resumes on their own machines, never shared;
  everything shared (the exported pipeline, inference weights) is safetensors only;
* ``state.json`` (written last: its presence marks a complete checkpoint): step, data
  position, number of processes and the config the run was trained with, for people and
  for ``--resume latest``.

The folder is written under a temporary sibling name and renamed when complete; the last
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Progress:
    """Where training is: optimizer steps, micro-steps, and the data position (epoch, batch).

    Registered for checkpointing, so accelerate saves and restores it with the rest.
    """

    step: int = 0
    micro_step: int = 0
    epoch: int = 0
    position: int = 0
    world_size: int = 1

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("world_size", self.world_size)) != self.world_size:
            raise InputError(
                f"--resume: the checkpoint was written by {state['world_size']} processes; "
                f"resume it with {state['world_size']} (this run has {self.world_size})"
            )
        for key in ("step", "micro_step", "epoch", "position"):
            setattr(self, key, int(state[key]))


def save_training_state(
    accelerator, folder: str | os.PathLike, progress: Progress, config: dict[str, Any] | None
) -> Path:
    """Every process calls this: ``accelerator.save_state`` into a temporary folder, then the
    main process adds ``state.json`` and renames it to ``folder``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record = {**progress.state_dict(), "config": config or {}}
        (tmp / "state.json").write_text(json.dumps(record, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    accelerator.wait_for_everyone()
    return folder


def load_training_state(accelerator, folder: str | os.PathLike) -> dict[str, Any]:
    """``accelerator.load_state`` (weights, optimizers, schedulers, RNGs, registered objects);
    returns the folder's ``state.json``."""
    folder = Path(folder)
    accelerator.load_state(str(folder))
    return json.loads((folder / "state.json").read_text())


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "state.json").is_file()]


def resolve_resume(run_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """``latest`` (the newest checkpoint of the run, or None), a folder path, or None."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise InputError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return path


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    found = list_checkpoints(run_dir)
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
