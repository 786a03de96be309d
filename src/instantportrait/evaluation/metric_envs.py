"""Environments of their own for metrics whose code pins old dependencies.

Q-Align's remote code (mPLUG-Owl2) imports names that transformers 5 removed, and the
``image-reward`` package pins old transformers and timm. Neither can live in the toolkit's
environment, so each runs in a virtual environment of its own, driven as a worker process
(:class:`~.metric_worker.MetricWorker`). One command builds it::

    instantportrait metric-env create q-align        # or: imagereward

Environments live under ``~/.cache/instantportrait/metric-envs/<name>`` (or
``$INSTANTPORTRAIT_METRIC_ENVS/<name>``). Creating one needs PyPI and, for the models that
the command stores (``--download``), the Hugging Face Hub; scoring afterwards is offline.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, MissingDependencyError

__all__ = ["ENVS", "MetricEnv", "create_env", "env_python", "envs_root", "worker_script"]

WORKER_SCRIPTS = Path(__file__).resolve().parent / "worker_scripts"


@dataclass(frozen=True)
class MetricEnv:
    """A metric's own environment.

    Attributes:
        name: its name (``q-align``, ``imagereward``).
        script: the worker script in ``worker_scripts/``.
        packages: what ``pip`` installs (torch is added at the toolkit's own version).
        downloads: Hub files stored with ``--download``: ``(repo, filename or None for the
            whole repository)``, into the environment's Hugging Face cache.
        weights_hint: what ``--weights KEY=...`` should point at.
    """

    name: str
    script: str
    packages: tuple[str, ...]
    downloads: tuple[tuple[str, str | None], ...]
    weights_hint: str


ENVS: dict[str, MetricEnv] = {
    "q-align": MetricEnv(
        "q-align",
        "qalign.py",
        (
            "transformers==4.36.1",
            "tokenizers==0.15.0",
            "sentencepiece",
            "accelerate==0.25.0",
            "icecream",
            "einops",
            "numpy<2",
            "pillow",
            "protobuf",
        ),
        (("q-future/one-align", None),),
        "a local folder of q-future/one-align",
    ),
    "imagereward": MetricEnv(
        "imagereward",
        "imagereward.py",
        ("image-reward", "numpy<2"),
        (
            ("THUDM/ImageReward", "ImageReward.pt"),
            ("THUDM/ImageReward", "med_config.json"),
            ("bert-base-uncased", None),
        ),
        "a folder with ImageReward.pt and med_config.json (THUDM/ImageReward)",
    ),
}


def _spec(name: str) -> MetricEnv:
    if name not in ENVS:
        raise InputError(f"metric environment {name!r}: one of {', '.join(ENVS)}")
    return ENVS[name]


def envs_root() -> Path:
    """Where the environments live (``$INSTANTPORTRAIT_METRIC_ENVS`` or the user cache)."""
    root = os.environ.get("INSTANTPORTRAIT_METRIC_ENVS")
    return Path(root) if root else Path.home() / ".cache" / "instantportrait" / "metric-envs"


def env_dir(name: str) -> Path:
    return envs_root() / _spec(name).name


def env_python(name: str) -> Path:
    """The environment's interpreter, or :class:`MissingDependencyError` naming the command
    that creates it."""
    python = env_dir(name) / "bin" / "python"
    if not python.exists():
        raise MissingDependencyError(
            f"{name} runs in an environment of its own, not found at {env_dir(name)}: create "
            f"it with `instantportrait metric-env create {name}`"
        )
    return python


def worker_script(name: str) -> Path:
    return WORKER_SCRIPTS / _spec(name).script


def hf_cache(name: str) -> Path:
    """The environment's own Hugging Face cache (its stored models)."""
    return env_dir(name) / "hf-cache"


def creation_commands(name: str, download: bool = True) -> list[list[str]]:
    """The commands :func:`create_env` runs after making the virtual environment."""
    import torch

    spec = _spec(name)
    python = str(env_dir(name) / "bin" / "python")
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    cmds = [
        [python, "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [python, "-m", "pip", "install", "-q", torch_pin, *spec.packages, "huggingface_hub"],
    ]
    if download:
        for repo, filename in spec.downloads:
            code = "import sys, huggingface_hub as h; " + (
                f"print(h.hf_hub_download({repo!r}, {filename!r}, cache_dir=sys.argv[1]))"
                if filename
                else f"print(h.snapshot_download({repo!r}, cache_dir=sys.argv[1]))"
            )
            cmds.append([python, "-c", code, str(hf_cache(name))])
    return cmds


def create_env(
    name: str,
    *,
    download: bool = True,
    dry_run: bool = False,
    run: Callable[[list[str]], None] | None = None,
) -> Path:
    """Build the metric's environment: a virtual environment, its pinned packages, and (with
    ``download``) its models in the environment's own Hugging Face cache. Returns its folder.

    ``dry_run`` prints the commands; ``run`` runs one command (default: ``subprocess``,
    failing with one line naming the command).
    """
    target = env_dir(name)
    cmds = creation_commands(name, download)
    if dry_run:
        print(shlex.join(["python", "-m", "venv", str(target)]))
        for cmd in cmds:
            print(shlex.join(cmd))
        return target

    def default_run(cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InputError(f"{name} environment: `{' '.join(cmd[:5])} ...` failed: {last}")

    run = run or default_run
    target.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=False).create(target)
    for cmd in cmds:
        print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
        run(cmd)
    return target
