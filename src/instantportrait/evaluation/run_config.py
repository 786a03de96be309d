"""What one evaluation run is: its configuration, its items, its summary, and which items a
process of a multi-process launch takes first."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from . import metrics as M
from .items import Subject, subjects_from_files
from .protocols import Prompt

__all__ = ["EvaluationConfig", "Item", "RunSummary", "process_rank", "rank_block"]


@dataclass(frozen=True)
class Item:
    """One (method, subject, prompt, seed) to generate and score."""

    method: str
    subject: Subject
    prompt: Prompt
    seed: int

    @property
    def face_key(self) -> str:
        """The subject's name in the store."""
        return self.subject.name

    @property
    def face(self) -> Path:
        """The subject's primary input photo."""
        return self.subject.input


def _to_subjects(faces: Sequence[Any]) -> list[Subject]:
    subjects: list[Subject] = []
    paths: list[Any] = []
    for f in faces:
        if isinstance(f, Subject):
            subjects.append(f)
        else:
            paths.append(f)
    if paths:
        subjects += subjects_from_files(paths)
    names = [s.name for s in subjects]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InputError(f"--faces: two inputs are named {dup!r}; outputs would collide")
    return subjects


@dataclass
class EvaluationConfig:
    """Everything one evaluation run needs, resolved and validated.

    Attributes:
        faces: the subjects: image files, folders (of images or identity folders), subjects
            files (``.json``) or :class:`~.items.Subject` objects.
        prompts: the prompts with their splits.
        methods: ``name -> SPEC`` (a :class:`MethodSpec`, a SPEC string, or a ready
            :class:`Method` object).
        metrics: metric names (see :data:`~.metrics.METRICS`).
        seeds: the seeds of every (subject, prompt).
        out: the output folder (store, outputs, report).
        weights: model key -> path / Hub id (or a ready model object).
        device: where methods and metrics run (default CPU).
        dtype: the methods' dtype (default float32; metrics always run in float32).
        text_template: what CLIP-T compares with, ``{prompt}`` replaced.
        references: the reference images of set metrics (FID); default the subjects'
            reference photos (held-out photos, else the inputs).
        face_match: the face matcher of face similarity (default: per subject, ``largest``
            for one identity, ``best`` for several).
        retry_failed: recompute failed outputs and metric rows.
        protocol: the protocol's name (recorded).
        progress: show a progress bar.
        report: write the report at the end.
    """

    faces: list[Any]
    prompts: list[Prompt]
    methods: dict[str, Any]
    metrics: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    out: Path = Path("evaluation")
    weights: dict[str, Any] = field(default_factory=dict)
    device: torch.device | str = "cpu"
    dtype: torch.dtype | None = None
    text_template: str = "{prompt}"
    references: list[Path] | None = None
    face_match: str | None = None
    retry_failed: bool = False
    protocol: str = ""
    progress: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.faces:
            raise InputError("--faces: no input faces")
        self.subjects: list[Subject] = _to_subjects(self.faces)
        if not self.prompts:
            raise InputError("--prompts: no prompts")
        if not self.methods:
            raise InputError("--method: give at least one NAME=SPEC")
        if not self.seeds:
            raise InputError("--seeds: at least one seed")
        unknown = [m for m in self.metrics if m not in M.METRICS]
        if unknown:
            raise InputError(f"--metrics: unknown metric {unknown[0]!r}")
        if self.face_match is not None and self.face_match not in M.FACE_MATCHERS:
            raise InputError(
                f"face_match {self.face_match!r}: one of {', '.join(sorted(M.FACE_MATCHERS))}"
            )

    @property
    def splits(self) -> list[str]:
        """The prompts' splits in order."""
        return list(dict.fromkeys(p.split for p in self.prompts))


@dataclass
class RunSummary:
    """What a run did."""

    items: int = 0
    already_done: int = 0
    processed: int = 0
    by_others: int = 0
    generated: int = 0
    reused_outputs: int = 0
    failed_outputs: int = 0
    rows_written: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    report: Path | None = None


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process from ``RANK`` / ``WORLD_SIZE`` (set by
    ``accelerate launch`` and torchrun); ``(0, 1)`` when run alone."""

    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise InputError("RANK / WORLD_SIZE: not integers") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} WORLD_SIZE={world}: rank outside the world")
    return rank, world


def rank_block(n: int, rank: int, world: int) -> range:
    """The item positions of ``rank``: a contiguous block, the blocks of all ranks disjoint
    and covering ``range(n)`` (sizes differ by at most one)."""
    return range(rank * n // world, (rank + 1) * n // world)
