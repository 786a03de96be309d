"""Group and set metrics of an evaluation run, each recomputed when its member set changes.

Method metrics (parameters, steps) once per method; group metrics (Intra-LPIPS) per subject
and seed within each split; set metrics (FID, FD-DINOv2, face-crop FID) per split against the
reference photos. A stored value is reused only while the hash of its members (which outputs,
which references) is unchanged. :class:`AggregateMetrics` is the part of
:class:`~.runner.Evaluator` that computes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import shorten_line
from ..io import load_image
from . import metrics as M
from .items import file_digest
from .methods import Method
from .protocols import DEFAULT_SPLIT
from .store import ResultRow, ResultStore

if TYPE_CHECKING:
    from .run_config import RunSummary

__all__ = ["AggregateMetrics", "group_members", "members_hash", "set_members", "split_groups"]

#: "every" in a key field: a set metric's rows span all subjects and seeds.
ALL = "*"


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (300 characters at most), for a failed row."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {shorten_line(text.splitlines()[0], 300) if text else ''}"


def members_hash(members: Sequence[Any]) -> str:
    """A hash of a group/set's members (any JSON-able list; order-independent)."""
    data = sorted(json.dumps(m, sort_keys=True, default=str) for m in members)
    return hashlib.sha1("\n".join(data).encode()).hexdigest()[:16]


def split_groups(prompts: dict[str, tuple[int, str]]) -> list[tuple[str, set[str]]]:
    """``[(split, prompt texts)]`` of ``prompt -> (index, split)``; with several splits the
    whole set is added as ``all``."""
    order = sorted(prompts.items(), key=lambda kv: kv[1][0])
    splits = list(dict.fromkeys(s for _, (_, s) in order))
    groups = [(s, {p for p, (_, sp) in order if sp == s}) for s in splits]
    if len(splits) > 1:
        groups.append((DEFAULT_SPLIT, set(prompts)))
    return groups


def group_members(outputs: Sequence[dict[str, Any]], texts: set[str]) -> list[list[Any]]:
    """The members of a group (one method, subject and seed): its ok outputs' prompts."""
    return sorted([o["prompt"], o["subject_fp"]] for o in outputs if o["prompt"] in texts)


def set_members(
    outputs: Sequence[dict[str, Any]], texts: set[str], reference_digests: Sequence[str]
) -> list[list[Any]]:
    """The members of a set metric: its ok outputs' items and the reference files."""
    items = [
        ["out", o["face"], o["subject_fp"], o["prompt"], o["seed"]]
        for o in outputs
        if o["prompt"] in texts
    ]
    return sorted(items) + [["ref", d] for d in reference_digests]


class AggregateMetrics:
    """Method, group and set metrics; mixed into :class:`~.runner.Evaluator`, whose state
    (``config``, ``methods``, ``metric_keys``, ``available``, ``hub``...) they read."""

    # ------------------------------------------------------------------ aggregates
    def _aggregate_row(self, metric: str, **key: Any) -> dict[str, Any]:
        return dict(metric=metric, metric_key=self.metric_keys[metric], **key)

    def _method_metrics(self, name: str, method: Method, store, summary) -> None:
        wanted = [m for m in self.available if M.METRICS[m].scope == "method"]
        mkey = self.method_keys[name]
        have = store.done_item((mkey, ALL, "", ALL, -1))
        missing = [m for m in wanted if (m, self.metric_keys[m]) not in have]
        if not missing:
            return
        try:
            cost = method.cost()
        except Exception as exc:  # noqa: BLE001
            cost, error = {}, first_line(exc)
        else:
            error = None
            store.set_method_cost(name, cost)
        rows = []
        for m in missing:
            key = self._aggregate_row(m, method=mkey, face=ALL, subject_fp="", prompt=ALL, seed=-1)
            if error is not None:
                rows.append(ResultRow(value=None, status="failed", error=error, **key))
                continue
            try:
                rows.append(ResultRow(value=M.METRICS[m].fn(cost), **key))
            except M.NotApplicable as exc:
                rows.append(ResultRow(value=None, status="n/a", error=str(exc), **key))
        store.add_rows(rows)
        summary.rows_written += len(rows)

    def _ok_outputs(self, store: ResultStore, name: str) -> list[dict[str, Any]]:
        subjects = {s.name: s.fingerprint() for s in self.config.subjects}
        seeds = set(self.config.seeds)
        prompts = {p.text for p in self.config.prompts}
        return [
            o
            for o in store.outputs(self.method_keys[name])
            if o["status"] == "ok"
            and subjects.get(o["face"]) == o["subject_fp"]
            and o["seed"] in seeds
            and o["prompt"] in prompts
            and o["path"]
            and (self.out / o["path"]).is_file()
        ]

    def _stored_members(self, store: ResultStore, metric: str, **key: Any) -> str | None:
        for r in store.rows(key["method"], metric):
            if (
                r.metric_key == self.metric_keys[metric]
                and r.face == key["face"]
                and r.subject_fp == key["subject_fp"]
                and r.prompt == key["prompt"]
                and r.seed == key["seed"]
            ):
                return r.members
        return None

    def _prompt_map(self) -> dict[str, tuple[int, str]]:
        return {p.text: (p.index, p.split) for p in self.config.prompts}

    def _group_metrics(self, store: ResultStore, summary: RunSummary) -> None:
        wanted = [m for m in self.available if M.METRICS[m].scope == "group"]
        if not wanted:
            return
        for name in self.methods:
            outputs = self._ok_outputs(store, name)
            for split, texts in split_groups(self._prompt_map()):
                for subject in self.config.subjects:
                    for seed in self.config.seeds:
                        group = sorted(
                            (
                                o
                                for o in outputs
                                if o["face"] == subject.name
                                and o["seed"] == seed
                                and o["prompt"] in texts
                            ),
                            key=lambda o: o["prompt"],
                        )
                        if len(group) < 2:
                            continue
                        members = members_hash(group_members(group, texts))
                        for m in wanted:
                            key = dict(
                                method=self.method_keys[name],
                                face=subject.name,
                                subject_fp=subject.fingerprint(),
                                prompt=f"{ALL}:{split}",
                                seed=seed,
                            )
                            if self._stored_members(store, m, **key) == members:
                                continue
                            row = self._aggregate(m, lambda m=m, g=group: self._group(m, g))
                            store.add_rows(
                                [
                                    ResultRow(
                                        n=len(group),
                                        members=members,
                                        **self._aggregate_row(m, **key),
                                        **row,
                                    )
                                ]
                            )
                            summary.rows_written += 1

    def _group(self, metric: str, group: list[dict[str, Any]]) -> float:
        from .metric_fns import pil_to_tensor

        images = [load_image(self.out / o["path"]) for o in group]
        size = images[0].size
        images = [im if im.size == size else im.resize(size, Image.BICUBIC) for im in images]
        return M.METRICS[metric].fn(pil_to_tensor(images), self.hub)

    def _reference_paths(self) -> list[Path]:
        if self.config.references:
            return list(self.config.references)
        refs = [p for s in self.config.subjects for p in s.reference_photos()]
        return list(dict.fromkeys(refs))

    def _reference_digests(self) -> list[str]:
        return sorted(file_digest(p) for p in self._reference_paths())

    def _set_metrics(self, store: ResultStore, summary: RunSummary) -> None:
        wanted = [m for m in self.available if M.METRICS[m].scope == "set"]
        if not wanted:
            return
        refs = self._reference_paths()
        digests = self._reference_digests()
        for name in self.methods:
            outputs = self._ok_outputs(store, name)
            for split, texts in split_groups(self._prompt_map()):
                chosen = [o for o in outputs if o["prompt"] in texts]
                if len(chosen) < 2 or len(refs) < 2:
                    continue
                members = members_hash(set_members(chosen, texts, digests))
                for m in wanted:
                    key = dict(
                        method=self.method_keys[name],
                        face=ALL,
                        subject_fp="",
                        prompt=f"{ALL}:{split}",
                        seed=-1,
                    )
                    if self._stored_members(store, m, **key) == members:
                        continue

                    def compute(m=m, chosen=chosen) -> float:
                        outs = [load_image(self.out / o["path"]) for o in chosen]
                        ref_images = [load_image(r) for r in refs]
                        return M.METRICS[m].fn(outs, ref_images, self.hub)

                    row = self._aggregate(m, compute)
                    store.add_rows(
                        [
                            ResultRow(
                                n=len(chosen),
                                members=members,
                                **self._aggregate_row(m, **key),
                                **row,
                            )
                        ]
                    )
                    summary.rows_written += 1

    @staticmethod
    def _aggregate(metric: str, compute: Callable[[], Any]) -> dict:
        t0 = time.perf_counter()
        try:
            value = compute()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as a failure of this aggregate
            return {"value": None, "status": "failed", "error": first_line(exc)}
        detail = None
        if isinstance(value, tuple):
            value, detail = value
        return {
            "value": float(value),
            "status": "ok",
            "seconds": time.perf_counter() - t0,
            "detail": detail,
        }
