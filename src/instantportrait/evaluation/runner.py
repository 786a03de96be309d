"""The evaluation runner: subjects x prompts x seeds x methods, each output generated once,
scored by every requested metric, every row in the store; resumable at any point; runs that
share an output folder split the work.

Order of work: per method, per subject, per prompt, per seed (one model in memory at a
time; the input's detections and embeddings are computed once per subject). Each method's
model is checked before anything is generated (a missing model: one line, exit 2). Results
are keyed by everything that determines them (:mod:`.store`): a changed setting, dtype,
model file, folder image, input photo, metric model or text template gives new keys, and
only the current run's keys are reported. This module plans, claims and orders the items;
one item's output and scores are made by :mod:`.item_scoring`, the group and set metrics by
:mod:`.aggregates`.

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

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import InputError
from ..io import load_image
from . import metrics as M
from .aggregates import AggregateMetrics, members_hash
from .claims import ItemKey
from .item_scoring import ItemScoring
from .items import Subject
from .methods import Method, MethodSpec, build_method
from .protocols import DEFAULT_SPLIT, Prompt
from .run_config import EvaluationConfig, Item, RunSummary, process_rank, rank_block
from .store import ResultStore

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

#: Seconds between looks at items another run is computing.
POLL_SECONDS = 0.5


class Evaluator(ItemScoring, AggregateMetrics):
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
            method.progress = cfg.progress  # a method's own bars (e.g. tuning) follow it
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
