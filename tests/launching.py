"""Commands on two CPU processes under ``accelerate launch`` (gloo), for the tests that check
a run across processes (training, evaluation, dataset generation): one environment and one
command line for all of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: two CPU processes: ``--multi_gpu`` with ``ACCELERATE_USE_CPU`` runs them on gloo
#: (accelerate's ``--cpu`` alone starts one)
CPU_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "ACCELERATE_USE_CPU": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
}

TWO_PROCESSES = [
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def settings(**kv) -> list[str]:
    """``--set`` arguments from keywords, ``__`` for the dots: ``settings(data__path=p)``."""
    return [a for k, v in kv.items() for a in ("--set", f"{k.replace('__', '.')}={v}")]


def launch(
    args: list, config: Path | None = None, entry: Path | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``accelerate launch [--config_file CONFIG | 2 CPU processes] -m instantportrait ARGS``
    (``entry``: that script instead of ``-m instantportrait``); fails the test with the end of
    stderr when the command fails."""
    how = ["--config_file", str(config)] if config is not None else TWO_PROCESSES
    target = [str(entry)] if entry is not None else ["-m", "instantportrait"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how, *target]
    proc = subprocess.run(
        [*cmd, *[str(a) for a in args]],
        env=CPU_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
