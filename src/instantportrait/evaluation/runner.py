"""The evaluation runner: faces x prompts x seeds x methods, each output generated once, scored
by every requested metric, every row in the store; resumable at any point.

Order of work: per method, per face, per prompt, per seed (one model in memory at a time; the
input's detections and embeddings are computed once per face). An item is *done* when its
output failed (recorded, not retried unless ``retry_failed``) or every available item metric
has a row. A restart skips done items, reloads stored PNGs instead of regenerating, and scores
only the missing metrics. After the items: method metrics (parameters, steps), group metrics
(Intra-LPIPS per face and seed within each split) and set metrics (FID per split), each
computed when missing or when its item count changed; then the report.
"""

from __future__ import annotations

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
from .methods import Method, MethodSpec, build_method
from .protocols import DEFAULT_SPLIT, Prompt
from .store import ResultRow, ResultStore

__all__ = ["EvaluationConfig", "Evaluator", "Item", "RunSummary", "evaluate"]

ALL = "*"


@dataclass(frozen=True)
class Item:
    """One (method, face, prompt, seed) to generate and score."""

    method: str
    face: Path
    prompt: Prompt
    seed: int

    @property
    def face_key(self) -> str:
        """The face's name in the store (its file name)."""
        return self.face.name


@dataclass
class EvaluationConfig:
    """Everything one evaluation run needs, resolved and validated.

    Attributes:
        faces: input portrait files (unique stems).
        prompts: the prompts with their splits.
        methods: ``name -> SPEC`` (a :class:`MethodSpec`, a SPEC string, or a ready
            :class:`Method` object).
        metrics: metric names (see :data:`~.metrics.METRICS`).
        seeds: the seeds of every (face, prompt).
        out: the output folder (store, outputs, report).
        weights: model key -> path / Hub id (or a ready model object).
        device: where methods and metrics run (default CPU).
        dtype: the methods' dtype (default float32; metrics always run in float32).
        text_template: what CLIP-T compares with, ``{prompt}`` replaced.
        references: the reference images of set metrics (FID); default the input faces.
        retry_failed: recompute failed outputs and metric rows.
        protocol: the protocol's name (recorded).
        progress: show a progress bar.
        report: write the report at the end.
    """

    faces: list[Path]
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
    retry_failed: bool = False
    protocol: str = ""
    progress: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.faces = [Path(f) for f in self.faces]
        if not self.faces:
            raise InputError("--faces: no input faces")
        stems = [f.stem for f in self.faces]
        dup = next((s for s in stems if stems.count(s) > 1), None)
        if dup is not None:
            raise InputError(f"--faces: two inputs are named {dup!r}; outputs would collide")
        if not self.prompts:
            raise InputError("--prompts: no prompts")
        if not self.methods:
            raise InputError("--method: give at least one NAME=SPEC")
        if not self.seeds:
            raise InputError("--seeds: at least one seed")
        unknown = [m for m in self.metrics if m not in M.METRICS]
        if unknown:
            raise InputError(f"--metrics: unknown metric {unknown[0]!r}")

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
    generated: int = 0
    reused_outputs: int = 0
    failed_outputs: int = 0
    rows_written: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    report: Path | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {(text.splitlines()[0] if text else '')[:300]}"


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

    # ------------------------------------------------------------------ planning
    def items(self) -> list[Item]:
        """Every item, in the order of work."""
        return [
            Item(name, face, prompt, seed)
            for name in self.methods
            for face in self.config.faces
            for prompt in self.config.prompts
            for seed in self.config.seeds
        ]

    def output_relpath(self, item: Item) -> str:
        """Where an item's PNG goes, relative to the output folder."""
        p = item.prompt
        return f"outputs/{item.method}/{item.face.stem}/{p.index:03d}-{p.hash}_s{item.seed}.png"

    def _item_metrics(self) -> list[str]:
        return [m for m in self.available if M.METRICS[m].scope == "item"]

    def _is_done(self, item: Item, done: dict[tuple[str, str, int], set[str]], store) -> bool:
        out = store.output(item.method, item.face_key, item.prompt.text, item.seed)
        if out is not None and out[1] == "failed":
            return True
        have = done.get((item.face_key, item.prompt.text, item.seed), set())
        need = set(self._item_metrics())
        if not need:
            return out is not None and out[1] == "ok"
        return need <= have

    def check_metrics(self, store: ResultStore | None = None) -> dict[str, str]:
        """Load the models of the requested metrics; returns ``metric -> reason`` for the
        unavailable ones (also recorded in the store)."""
        self.available, self.unavailable = [], {}
        for name in self.config.metrics:
            reason = self.hub.check(M.METRICS[name])
            if reason is None:
                self.available.append(name)
            else:
                self.unavailable[name] = reason
            if store is not None:
                store.set_metric_status(
                    name, "available" if reason is None else "unavailable", reason
                )
        return dict(self.unavailable)

    # ------------------------------------------------------------------ running
    def run(self, on_item: Callable[[int, Item], None] | None = None) -> RunSummary:
        """Generate and score everything missing; ``on_item(count, item)`` is called after
        each processed item's rows are committed (count = items processed in this run)."""
        from tqdm.auto import tqdm

        cfg = self.config
        start = time.perf_counter()
        summary = RunSummary()
        with ResultStore(self.out) as store:
            for name, method in self.methods.items():
                store.register_method(name, self.specs[name], method.settings())
            store.set_prompts([(p.text, p.index, p.split) for p in cfg.prompts])
            store.set_meta("protocol", cfg.protocol)
            store.set_meta(
                "config",
                {
                    "faces": [str(f) for f in cfg.faces],
                    "seeds": cfg.seeds,
                    "metrics": cfg.metrics,
                    "methods": self.specs,
                    "text_template": cfg.text_template,
                    "weights": {k: self.hub.source(k) for k in cfg.weights},
                },
            )
            try:
                from ..environment import environment_report

                store.set_meta("environment", environment_report())
            except Exception:  # noqa: BLE001 - the report of the environment is best effort
                pass
            if cfg.retry_failed:
                store.delete_failed()
            summary.unavailable = self.check_metrics(store)

            items = self.items()
            summary.items = len(items)
            done = {name: store.done_keys(name) for name in self.methods}
            todo = [it for it in items if not self._is_done(it, done[it.method], store)]
            summary.already_done = len(items) - len(todo)
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
            try:
                for item in todo:
                    if item.face not in inputs:
                        inputs.clear()
                        inputs[item.face] = load_image(item.face)
                    self._process(item, inputs[item.face], done[item.method], store, summary)
                    summary.processed += 1
                    bar.update(1)
                    bar.set_postfix_str(item.method, refresh=False)
                    if on_item is not None:
                        on_item(summary.processed, item)
            finally:
                bar.close()
            for name, method in self.methods.items():
                self._method_metrics(name, method, store, summary)
                method.close()
            self._group_metrics(store, summary)
            self._set_metrics(store, summary)
            summary.seconds = time.perf_counter() - start
            if cfg.report:
                from .report import write_report

                summary.report = write_report(self.out, store=store)
        return summary

    def _output(self, item: Item, image: Image.Image, store: ResultStore, summary: RunSummary):
        rel = self.output_relpath(item)
        stored = store.output(item.method, item.face_key, item.prompt.text, item.seed)
        path = self.out / rel
        if stored and stored[1] == "ok" and stored[0] and (self.out / stored[0]).is_file():
            summary.reused_outputs += 1
            return load_image(self.out / stored[0])
        t0 = time.perf_counter()
        try:
            out = self.methods[item.method].generate(
                image,
                item.prompt.text,
                item.seed,
                face=item.face.stem,
                prompt_index=item.prompt.index,
                prompt_hash=item.prompt.hash,
            )
            if not isinstance(out, Image.Image):
                out = load_image(out, name=f"{item.method} output")
            out = out.convert("RGB")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a method failing on one item is recorded
            store.set_output(
                item.method,
                item.face_key,
                item.prompt.text,
                item.seed,
                None,
                "failed",
                _first_line(exc),
                time.perf_counter() - t0,
            )
            summary.failed_outputs += 1
            return None
        seconds = time.perf_counter() - t0
        # lossless PNG at zlib level 1: ~8x faster to write than level 6, a little larger
        atomic_write(path, lambda tmp: out.save(tmp, format="PNG", compress_level=1))
        store.set_output(
            item.method, item.face_key, item.prompt.text, item.seed, rel, "ok", None, seconds
        )
        summary.generated += 1
        return out

    def _process(self, item: Item, image: Image.Image, done, store, summary) -> None:
        output = self._output(item, image, store, summary)
        if output is None:
            return
        key = (item.face_key, item.prompt.text, item.seed)
        have = done.get(key, set())
        ctx = M.ItemContext(
            image,
            output,
            item.prompt.text,
            self.hub,
            text=self.config.text_template.format(prompt=item.prompt.text),
            input_key=str(item.face),
        )
        rows = []
        for name in self._item_metrics():
            if name in have:
                continue
            rows.append(self._score(name, item, ctx))
        store.add_rows(rows)
        summary.rows_written += len(rows)

    def _score(self, name: str, item: Item, ctx: M.ItemContext) -> ResultRow:
        key = dict(method=item.method, face=item.face_key, prompt=item.prompt.text, seed=item.seed)
        t0 = time.perf_counter()
        try:
            value = M.METRICS[name].fn(ctx)
        except (KeyboardInterrupt, SystemExit):
            raise
        except M.NotApplicable as exc:
            return ResultRow(metric=name, value=None, status="n/a", error=str(exc), **key)
        except Exception as exc:  # noqa: BLE001 - recorded as this item's failure
            return ResultRow(
                metric=name,
                value=None,
                status="failed",
                error=_first_line(exc),
                seconds=time.perf_counter() - t0,
                **key,
            )
        return ResultRow(
            metric=name, value=float(value), seconds=time.perf_counter() - t0, n=1, **key
        )

    # ------------------------------------------------------------------ aggregates
    def _method_metrics(self, name: str, method: Method, store, summary) -> None:
        wanted = [m for m in self.available if M.METRICS[m].scope == "method"]
        have = store.done_metrics(name, ALL, ALL, -1)
        missing = [m for m in wanted if m not in have]
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
            key = dict(method=name, face=ALL, prompt=ALL, seed=-1, metric=m)
            if error is not None:
                rows.append(ResultRow(value=None, status="failed", error=error, **key))
                continue
            try:
                rows.append(ResultRow(value=M.METRICS[m].fn(cost), **key))
            except M.NotApplicable as exc:
                rows.append(ResultRow(value=None, status="n/a", error=str(exc), **key))
        store.add_rows(rows)
        summary.rows_written += len(rows)

    def _split_groups(self) -> list[tuple[str, set[str]]]:
        splits = self.config.splits
        groups = [(s, {p.text for p in self.config.prompts if p.split == s}) for s in splits]
        if len(splits) > 1:
            groups.append((DEFAULT_SPLIT, {p.text for p in self.config.prompts}))
        return groups

    def _ok_outputs(self, store: ResultStore, method: str) -> list[dict[str, Any]]:
        faces = {f.name for f in self.config.faces}
        seeds = set(self.config.seeds)
        prompts = {p.text for p in self.config.prompts}
        return [
            o
            for o in store.outputs(method)
            if o["status"] == "ok"
            and o["face"] in faces
            and o["seed"] in seeds
            and o["prompt"] in prompts
            and o["path"]
            and (self.out / o["path"]).is_file()
        ]

    def _existing_n(self, store, method, face, prompt, seed, metric) -> int | None:
        for r in store.rows(method, metric):
            if r.face == face and r.prompt == prompt and r.seed == seed:
                return r.n if r.n is not None else -1
        return None

    def _group_metrics(self, store: ResultStore, summary: RunSummary) -> None:
        wanted = [m for m in self.available if M.METRICS[m].scope == "group"]
        if not wanted:
            return
        for name in self.methods:
            outputs = self._ok_outputs(store, name)
            for split, texts in self._split_groups():
                for face in self.config.faces:
                    for seed in self.config.seeds:
                        group = sorted(
                            (
                                o
                                for o in outputs
                                if o["face"] == face.name
                                and o["seed"] == seed
                                and o["prompt"] in texts
                            ),
                            key=lambda o: o["prompt"],
                        )
                        if len(group) < 2:
                            continue
                        for m in wanted:
                            key = dict(
                                method=name, face=face.name, prompt=f"{ALL}:{split}", seed=seed
                            )
                            if self._existing_n(store, metric=m, **key) == len(group):
                                continue
                            row = self._aggregate(m, key, lambda m=m, g=group: self._group(m, g))
                            store.add_rows([ResultRow(metric=m, n=len(group), **{**key, **row})])
                            summary.rows_written += 1

    def _group(self, metric: str, group: list[dict[str, Any]]) -> float:
        from .metric_fns import pil_to_tensor

        images = [load_image(self.out / o["path"]) for o in group]
        size = images[0].size
        images = [im if im.size == size else im.resize(size, Image.BICUBIC) for im in images]
        return M.METRICS[metric].fn(pil_to_tensor(images), self.hub)

    def _set_metrics(self, store: ResultStore, summary: RunSummary) -> None:
        wanted = [m for m in self.available if M.METRICS[m].scope == "set"]
        if not wanted:
            return
        refs = self.config.references or self.config.faces
        for name in self.methods:
            outputs = self._ok_outputs(store, name)
            for split, texts in self._split_groups():
                chosen = [o for o in outputs if o["prompt"] in texts]
                if len(chosen) < 2 or len(refs) < 2:
                    continue
                for m in wanted:
                    key = dict(method=name, face=ALL, prompt=f"{ALL}:{split}", seed=-1)
                    if self._existing_n(store, metric=m, **key) == len(chosen):
                        continue

                    def compute(m=m, chosen=chosen) -> float:
                        outs = [load_image(self.out / o["path"]) for o in chosen]
                        ref_images = [load_image(r) for r in refs]
                        return M.METRICS[m].fn(outs, ref_images, self.hub)

                    row = self._aggregate(m, key, compute)
                    store.add_rows([ResultRow(metric=m, n=len(chosen), **{**key, **row})])
                    summary.rows_written += 1

    @staticmethod
    def _aggregate(metric: str, key: dict[str, Any], compute: Callable[[], float]) -> dict:
        t0 = time.perf_counter()
        try:
            value = float(compute())
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as a failure of this aggregate
            return {"value": None, "status": "failed", "error": _first_line(exc)}
        return {"value": value, "status": "ok", "seconds": time.perf_counter() - t0}


def evaluate(
    faces: Sequence[str | Path],
    prompts: Sequence[str | Prompt],
    methods: dict[str, str | MethodSpec | Method],
    metrics: Sequence[str],
    out: str | Path,
    seeds: Sequence[int] = (0,),
    **kwargs: Any,
) -> RunSummary:
    """Run an evaluation from Python (see :class:`EvaluationConfig` for ``kwargs``)."""
    plist = [
        p if isinstance(p, Prompt) else Prompt(str(p), DEFAULT_SPLIT, i)
        for i, p in enumerate(prompts)
    ]
    config = EvaluationConfig(
        faces=[Path(f) for f in faces],
        prompts=plist,
        methods=dict(methods),
        metrics=M.resolve_metric_names(list(metrics)),
        seeds=list(seeds),
        out=Path(out),
        **kwargs,
    )
    return Evaluator(config).run()
