"""Metrics logging: one CSV row per logged step, mirrored to TensorBoard when installed."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Any

#: rows end in a plain newline (the csv module's default is ``\r\n``)
LINE_END = "\n"


class MetricsLogger:
    """Append rows to ``RUN/metrics.csv`` and TensorBoard (``RUN/tensorboard``).

    Args:
        run_dir: the run folder.
        keys: the columns after ``step`` (each loss term separately).
        resume_step: on resume, rows logged after this step (by a run that died after its last
            checkpoint) are dropped so the file continues exactly.
        tensorboard: mirror to TensorBoard when the package is installed.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        keys: list[str],
        resume_step: int = 0,
        tensorboard: bool = True,
    ):
        self.path = Path(run_dir) / "metrics.csv"
        self.keys = ["step", *keys]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if resume_step > 0 and self.path.is_file():
            with self.path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.keys, lineterminator=LINE_END)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in self.keys} for r in rows)
        self.writer = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1
            )

    def log(self, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, **{k: values.get(k, "") for k in self.keys[1:]}}
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.keys, lineterminator=LINE_END).writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The logged rows of a run as floats (for tests, reports and plots)."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]
