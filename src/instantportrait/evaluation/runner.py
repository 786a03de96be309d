"""The evaluation runner: subjects x prompts x seeds x methods, each output generated once,
scored by every requested metric, every row in the store; resumable at any point; runs that
share an output folder split the work.

Order of work: per method, per subject, per prompt, per seed (one model in memory at a
time; the input's detections and embeddings are computed once per subject). Each method's
model is checked before anything is generated (a missing model: one line, exit 2). Results
are keyed by everything that determines them (:mod:`.store`): a changed setting, dtype,
model file, folder image, input photo, metric model or text template gives new keys, and
only the current run's keys are reported.

An item is *done* when its output failed (recorded, not retried unless ``retry_failed``) or
every available item metric has a row under its current key. Before computing an item a run
*claims* it in the store (atomically), so two runs into one folder never compute the same
item; at the end a run waits for the items others hold. After the items: method metrics
(parameters, steps), group metrics (Intra-LPIPS per subject and seed within each split) and
set metrics (FID, FD-DINOv2 per split), each recomputed when its *member set* changes; then
the report.

**Several processes** (``accelerate launch --num_processes N -m instantportrait evaluate ...``,
or torchrun; one process per GPU, on one or several machines sharing the output folder): each
process reads its rank from ``RANK`` / ``WORLD_SIZE``, takes the contiguous block
``items[rank * n // N : (rank + 1) * n // N]`` (so each rank loads few methods), claims and
computes it, then takes over the unclaimed items of the others' blocks from their ends (a rank
that finishes early helps; a rank that died leaves stale claims that are taken over). All
ranks write into the one results store (SQLite in the shared folder; claims keep the items
disjoint); rank 0 waits until every item is done, then computes the group and set metrics and
writes the report. No collective call is made, so nothing times out while a slow rank works,
and a rerun resumes as usual.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import InputError
from ..io import atomic_write, load_image
from . import metrics as M
from .items import Subject, file_digest, subjects_from_files
from .methods import Method, MethodSpec, build_method
from .protocols import DEFAULT_SPLIT, Prompt
from .store import ItemKey, ResultRow, ResultStore

__all__ = [
    "EvaluationConfig",
    "Evaluator",
    "Item",
    "RunSummary",
    "evaluate",
    "members_hash",
    "process_rank",
    "rank_block",
]

ALL = "*"
#: Seconds between looks at items another run is computing.
POLL_SECONDS = 0.5


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
    import os

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {(text.splitlines()[0] if text else '')[:300]}"


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


class Evaluator:
    """Runs an :class:`EvaluationConfig` into its output folder.

    Args:
        config: the run.
        hub: the metric models (default: one built from ``config.weights``).
    """

    def __init__(self, config: EvaluationConfig, hub: M.ModelHub | None = None) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.hub = hub or M.ModelHub(config.weights, device=self.device)
        self.methods: dict[str, Method] = {}
        self.specs: dict[str, str] = {}
        for name, spec in config.methods.items():
            if isinstance(spec, Method):
                self.methods[name] = spec
                self.specs[name] = spec.spec.text or spec.spec.kind
            else:
                method = build_method(spec, device=self.device, dtype=config.dtype)
                self.methods[name] = method
                self.specs[name] = method.spec.text or method.spec.kind
        self.out = config.out
        self.available: list[str] = []
        self.unavailable: dict[str, str] = {}
        self.method_keys: dict[str, str] = {}
        self.metric_keys: dict[str, str] = {}

    # ------------------------------------------------------------------ planning
    def items(self) -> list[Item]:
        """Every item, in the order of work."""
        return [
            Item(name, subject, prompt, seed)
            for name in self.methods
            for subject in self.config.subjects
            for prompt in self.config.prompts
            for seed in self.config.seeds
        ]

    def key(self, item: Item) -> ItemKey:
        """The item's key in the store."""
        return (
            self.method_keys[item.method],
            item.subject.name,
            item.subject.fingerprint(),
            item.prompt.text,
            int(item.seed),
        )

    def output_relpath(self, item: Item) -> str:
        """Where an item's PNG goes, relative to the output folder (the ``folder`` method
        reads this layout back: ``folder:OUT/outputs/NAME``)."""
        p = item.prompt
        return f"outputs/{item.method}/{item.subject.name}/{p.index:03d}-{p.hash}_s{item.seed}.png"

    def _item_metrics(self) -> list[str]:
        return [m for m in self.available if M.METRICS[m].scope == "item"]

    def _needed(self) -> set[tuple[str, str]]:
        return {(m, self.metric_keys[m]) for m in self._item_metrics()}

    def _is_done(self, key: ItemKey, have: set[tuple[str, str]], store: ResultStore) -> bool:
        out = store.output(key)
        if out is not None and out[1] == "failed":
            return True
        need = self._needed()
        if not need:
            return out is not None and out[1] == "ok"
        return need <= have

    def check_methods(self) -> None:
        """Check every method's model before anything is generated (raises one line)."""
        for name, method in self.methods.items():
            try:
                method.check()
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - ModelNotFoundError and the like
                from ..errors import InstantPortraitError

                if isinstance(exc, InstantPortraitError):
                    raise type(exc)(f"--method {name}: {exc}") from None
                raise

    def check_metrics(self, store: ResultStore | None = None) -> dict[str, str]:
        """Load the models of the requested metrics; returns ``metric -> reason`` for the
        unavailable ones (also recorded in the store)."""
        self.available, self.unavailable = [], {}
        for name in self.config.metrics:
            reason = self.hub.check(M.METRICS[name])
            if reason is None:
                self.available.append(name)
                self.metric_keys[name] = M.metric_key(
                    M.METRICS[name], self.hub, self.config.text_template
                )
            else:
                self.unavailable[name] = reason
            if store is not None:
                store.set_metric_status(
                    name, "available" if reason is None else "unavailable", reason
                )
        return dict(self.unavailable)

    # ------------------------------------------------------------------ running
    def _register(self, store: ResultStore) -> None:
        cfg = self.config
        fingerprints = {}
        for name, method in self.methods.items():
            method.prompts = list(cfg.prompts)
            data = method.fingerprint_data()
            fingerprints[name] = data
            self.method_keys[name] = method.fingerprint()
            method.cache_dir = self.out / "cache" / f"{name}-{self.method_keys[name][:8]}"
        store.register_methods(
            {
                name: (self.specs[name], self.method_keys[name], m.settings(), fingerprints[name])
                for name, m in self.methods.items()
            }
        )
        store.set_prompts([(p.text, p.index, p.split) for p in cfg.prompts])
        store.set_meta("protocol", cfg.protocol)
        store.set_meta(
            "config",
            {
                "faces": [str(s.input) for s in cfg.subjects],
                "subjects": [s.describe() for s in cfg.subjects],
                "seeds": cfg.seeds,
                "metrics": cfg.metrics,
                "methods": self.specs,
                "dtype": str(cfg.dtype or torch.float32).replace("torch.", ""),
                "text_template": cfg.text_template,
                "face_match": cfg.face_match,
                "weights": {k: self.hub.source(k) for k in cfg.weights},
            },
        )
        try:
            from ..environment import environment_report

            store.set_meta("environment", environment_report())
        except Exception:  # noqa: BLE001 - the report of the environment is best effort
            pass

    def _set_run(self, store: ResultStore) -> None:
        cfg = self.config
        store.set_meta(
            "run",
            {
                "methods": dict(self.method_keys),
                "subjects": {s.name: s.fingerprint() for s in cfg.subjects},
                "prompts": [p.text for p in cfg.prompts],
                "seeds": list(cfg.seeds),
                "metrics": dict(self.metric_keys),
                "references": self._reference_digests(),
            },
        )

    def run(self, on_item: Callable[[int, Item], None] | None = None) -> RunSummary:
        """Generate and score everything missing; ``on_item(count, item)`` is called after
        each processed item's rows are committed (count = items processed in this run)."""
        from tqdm.auto import tqdm

        cfg = self.config
        start = time.perf_counter()
        summary = RunSummary()
        self.check_methods()
        with ResultStore(self.out) as store:
            self._register(store)
            if cfg.retry_failed:
                store.delete_failed(list(self.method_keys.values()))
            summary.unavailable = self.check_metrics(store)
            self._set_run(store)

            items = self.items()
            summary.items = len(items)
            done = {k: store.done_keys(k) for k in set(self.method_keys.values())}
            todo_at = [
                (i, it)
                for i, it in enumerate(items)
                if not self._is_done(
                    self.key(it), done[self.key(it)[0]].get(self.key(it)[1:], set()), store
                )
            ]
            summary.already_done = len(items) - len(todo_at)
            rank, world = process_rank()
            mine = rank_block(len(items), rank, world)
            todo = [it for i, it in todo_at if i in mine]
            # the others' blocks, taken over from their ends once this block is done
            others = [it for i, it in reversed(todo_at) if i not in mine]
            bar = tqdm(
                total=len(items),
                initial=summary.already_done,
                desc="evaluating",
                unit="item",
                file=sys.stderr,
                disable=not cfg.progress,
                dynamic_ncols=True,
            )
            inputs: dict[Path, Image.Image] = {}
            loaded: list[str] = []  # the method whose models are in memory

            def process(item: Item) -> None:
                if loaded and loaded[0] != item.method:
                    # one method's models in memory at a time (a sweep is many pipelines);
                    # its cost is stored while it is loaded
                    prev = loaded.pop()
                    self._method_metrics(prev, self.methods[prev], store, summary)
                    self.methods[prev].close()
                if not loaded:
                    loaded.append(item.method)
                if item.face not in inputs:
                    inputs.clear()
                    inputs[item.face] = load_image(item.face)
                self._process(item, inputs[item.face], store, summary)
                summary.processed += 1
                bar.update(1)
                bar.set_postfix_str(item.method, refresh=False)
                if on_item is not None:
                    on_item(summary.processed, item)

            try:
                pending: list[Item] = list(others)
                for item in todo:
                    key = self.key(item)
                    if not store.claim(key):
                        pending.append(item)
                        continue
                    try:
                        # another run may have finished it since the plan was made
                        if self._is_done(key, store.done_item(key), store):
                            summary.by_others += 1
                            bar.update(1)
                            continue
                        process(item)
                    finally:
                        store.release(key)
                pending = pending[len(others) :] + pending[: len(others)]
                while pending:  # items other runs hold: wait, or take over abandoned ones
                    still = []
                    for item in pending:
                        key = self.key(item)
                        if self._is_done(key, store.done_item(key), store):
                            summary.by_others += 1
                            bar.update(1)
                        elif not store.claimed_by_other(key) and store.claim(key):
                            try:
                                process(item)
                            finally:
                                store.release(key)
                        else:
                            still.append(item)
                    pending = still
                    if pending:
                        time.sleep(POLL_SECONDS)
            finally:
                bar.close()
            for name, method in self.methods.items():
                if rank == 0 or name in loaded:
                    self._method_metrics(name, method, store, summary)
                method.close()
            summary.seconds = time.perf_counter() - start
            if rank != 0:  # rank 0 reports once every item is done
                return summary
            self._group_metrics(store, summary)
            self._set_metrics(store, summary)
            summary.seconds = time.perf_counter() - start
            if cfg.report:
                from .report import write_report

                summary.report = write_report(self.out, store=store)
        return summary

    def _generate(self, item: Item, image: Image.Image) -> Image.Image:
        out = self.methods[item.method].generate(
            image,
            item.prompt.text,
            item.seed,
            face=item.subject.name,
            prompt_index=item.prompt.index,
            prompt_hash=item.prompt.hash,
            subject=item.subject,
        )
        if not isinstance(out, Image.Image):
            out = load_image(out, name=f"{item.method} output")
        return out.convert("RGB")

    def _output(self, item: Item, image: Image.Image, store: ResultStore, summary: RunSummary):
        key = self.key(item)
        rel = self.output_relpath(item)
        stored = store.output(key)
        path = self.out / rel
        if stored and stored[1] == "ok" and stored[0] and (self.out / stored[0]).is_file():
            summary.reused_outputs += 1
            return load_image(self.out / stored[0])
        t0 = time.perf_counter()
        try:
            out = self._generate(item, image)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a method failing on one item is recorded
            error = _first_line(exc)
            store.set_output(key, None, "failed", error, time.perf_counter() - t0)
            rows = [
                self._row(item, name, value=M.METRICS[name].on_generation_failure)
                for name in self._item_metrics()
                if M.METRICS[name].on_generation_failure is not None
            ]
            rows = [
                ResultRow(
                    **{**r.__dict__, "error": "generation failed", "detail": {"error": error}}
                )
                for r in rows
            ]
            store.add_rows(rows)
            summary.rows_written += len(rows)
            summary.failed_outputs += 1
            return None
        seconds = time.perf_counter() - t0
        # lossless PNG at zlib level 1: ~8x faster to write than level 6, a little larger
        atomic_write(path, lambda tmp: out.save(tmp, format="PNG", compress_level=1))
        store.set_output(key, rel, "ok", None, seconds)
        summary.generated += 1
        return out

    def _row(self, item: Item, metric: str, **fields: Any) -> ResultRow:
        key = self.key(item)
        base = dict(
            method=key[0],
            face=key[1],
            subject_fp=key[2],
            prompt=key[3],
            seed=key[4],
            metric=metric,
            metric_key=self.metric_keys[metric],
            value=None,
        )
        base.update(fields)
        return ResultRow(**base)

    def _process(self, item: Item, image: Image.Image, store: ResultStore, summary) -> None:
        output = self._output(item, image, store, summary)
        if output is None:
            return
        have = store.done_item(self.key(item))
        ctx = M.ItemContext(
            image,
            output,
            item.prompt.text,
            self.hub,
            text=self.config.text_template.format(prompt=item.prompt.text),
            input_key=str(item.face),
            subject=item.subject,
            face_match=self.config.face_match,
        )
        rows = []
        for name in self._item_metrics():
            if (name, self.metric_keys[name]) in have:
                continue
            rows.append(self._score(name, item, ctx))
        store.add_rows(rows)
        summary.rows_written += len(rows)

    def _score(self, name: str, item: Item, ctx: M.ItemContext) -> ResultRow:
        t0 = time.perf_counter()
        ctx.detail = {}
        try:
            value = M.METRICS[name].fn(ctx)
        except (KeyboardInterrupt, SystemExit):
            raise
        except M.NotApplicable as exc:
            return self._row(item, name, status="n/a", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - recorded as this item's failure
            return self._row(
                item,
                name,
                status="failed",
                error=_first_line(exc),
                seconds=time.perf_counter() - t0,
            )
        return self._row(
            item,
            name,
            value=float(value),
            seconds=time.perf_counter() - t0,
            n=1,
            detail=dict(ctx.detail) or None,
        )

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
            cost, error = {}, _first_line(exc)
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
            return {"value": None, "status": "failed", "error": _first_line(exc)}
        detail = None
        if isinstance(value, tuple):
            value, detail = value
        return {
            "value": float(value),
            "status": "ok",
            "seconds": time.perf_counter() - t0,
            "detail": detail,
        }


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, Path, Subject)):
        return [value]
    return list(value)


def evaluate(
    faces: str | Path | Sequence[str | Path | Subject],
    prompts: str | Path | Sequence[str | Prompt],
    methods: dict[str, str | MethodSpec | Method],
    metrics: str | Sequence[str],
    out: str | Path,
    seeds: int | Sequence[int] = (0,),
    **kwargs: Any,
) -> RunSummary:
    """Run an evaluation from Python (see :class:`EvaluationConfig` for ``kwargs``).

    ``faces``: a folder, a file, a subjects ``.json`` or a list of them (or
    :class:`~.items.Subject` objects); ``prompts``: a prompt file path or a list of prompts;
    ``metrics``: a comma list (``"offline"``, ``"all"``, ``"face_sim_dlib,ffc"``) or a list
    of names; ``seeds``: a count or a list of seeds.
    """
    from .methods import parse_method_spec

    if isinstance(prompts, Path) or (isinstance(prompts, str) and Path(prompts).is_file()):
        from .protocols import read_prompts

        plist = read_prompts(prompts)
    else:
        plist = [
            p if isinstance(p, Prompt) else Prompt(str(p), DEFAULT_SPLIT, i)
            for i, p in enumerate(_as_list(prompts))
        ]
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    resolved = {
        name: parse_method_spec(m) if isinstance(m, str) else m for name, m in methods.items()
    }
    config = EvaluationConfig(
        faces=_as_list(faces),
        prompts=plist,
        methods=resolved,
        metrics=M.resolve_metric_names(metrics),
        seeds=seed_list,
        out=Path(out),
        **kwargs,
    )
    return Evaluator(config).run()
