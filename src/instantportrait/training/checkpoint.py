"""Training-state checkpoints in safetensors + JSON: nothing pickled, nothing half-written.

A checkpoint folder ``RUN/checkpoints/step-000123/`` holds:

* ``model.safetensors`` (and one file per further trainable module, e.g. the discriminator),
* ``ema.safetensors`` when EMA is on,
* ``optimizer.safetensors`` + ``optimizer.json`` per optimizer: its ``state_dict`` split into
  tensors and the JSON-able rest (param groups, scalar state),
* ``rng.safetensors``: the torch CPU (and CUDA) generator states,
* ``state.json``: step, data position, LR-scheduler states, python/numpy RNG states, the
  config it was trained with.

Inference weights are written separately (the pipeline folder); this is training state.
Folders are built in a temporary sibling and renamed (:func:`instantportrait.io.atomic_directory`);
the last ``keep`` are kept. With DDP every rank holds the same state and the main process
writes; for sharded FSDP/DeepSpeed states use accelerate's own ``save_state``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io import atomic_directory

STEP_DIR = re.compile(r"^step-(\d+)$")


def split_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Separate tensors from a nested state (dicts/lists): tensors by dotted key, the rest JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[key] = node.detach().to("cpu").contiguous()
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[walk_key(k), walk(v, f"{key}.{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return {
                "__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(node)],
                "tuple": isinstance(node, tuple),
            }
        if isinstance(node, (int, float, str, bool)) or node is None:
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {key} in a checkpoint")

    def walk_key(k: Any) -> Any:
        if isinstance(k, (int, str)):
            return k
        raise TypeError(f"cannot store a key of type {type(k).__name__}")

    return tensors, walk(state, prefix or "root")


def join_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The inverse of :func:`split_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: join_state(tensors, v) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            items = [join_state(tensors, v) for v in skeleton["__list__"]]
            return tuple(items) if skeleton.get("tuple") else items
    return skeleton


def save_tree(folder: Path, name: str, state: Any) -> None:
    """Write a nested state as ``NAME.safetensors`` + ``NAME.json``."""
    tensors, skeleton = split_state(state)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def load_tree(folder: Path, name: str, device: str | torch.device = "cpu") -> Any:
    tensors = load_file(str(folder / f"{name}.safetensors"), device=str(device))
    skeleton = json.loads((folder / f"{name}.json").read_text())
    return join_state(tensors, skeleton)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global RNG's state: tensors for torch, JSON for python and numpy."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *map(lambda v: v if not hasattr(v, "item") else v.item(), np_state[2:]),
        ],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))


def save_checkpoint(
    folder: str | os.PathLike,
    *,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    ema: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
) -> Path:
    """Write one checkpoint folder atomically (see the module docstring for its files)."""
    dest = Path(folder)
    with atomic_directory(dest, overwrite=True) as tmp:
        for name, module in modules.items():
            sd = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
            save_file(sd, str(tmp / f"{name}.safetensors"))
        if ema is not None:
            save_file(
                {k: v.to("cpu").contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors")
            )
        for name, opt in optimizers.items():
            save_tree(tmp, f"optimizer_{name}", opt.state_dict())
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        full = {
            **state,
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "rng": rng_meta,
        }
        (tmp / "state.json").write_text(json.dumps(full, indent=1, default=_json_default))
    return dest


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def load_checkpoint(
    folder: str | os.PathLike,
    *,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    schedulers: dict[str, Any],
    restore_rng: bool = True,
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore modules, optimizers, schedulers and RNGs; returns (state, ema tensors or None)."""
    src = Path(folder)
    if not (src / "state.json").is_file():
        raise InputError(f"{src}: not a training checkpoint (no state.json)")
    for name, module in modules.items():
        path = src / f"{name}.safetensors"
        if not path.is_file():
            raise InputError(f"{src}: checkpoint lacks {path.name}")
        device = next(module.parameters()).device
        module.load_state_dict(load_file(str(path), device=str(device)))
    for name, opt in optimizers.items():
        opt.load_state_dict(load_tree(src, f"optimizer_{name}"))
    state = json.loads((src / "state.json").read_text())
    for name, sched in schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    if restore_rng:
        set_rng_state(load_file(str(src / "rng.safetensors")), state["rng"])
    ema_path = src / "ema.safetensors"
    ema = load_file(str(ema_path)) if ema_path.is_file() else None
    return state, ema


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
