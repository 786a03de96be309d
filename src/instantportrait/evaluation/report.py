"""Reports of an evaluation folder: ``report.md``, ``report.csv``, ``pareto.png`` and
``contact_sheet.png``, all written atomically from the store alone (``--report-only`` redraws
them without running anything).

Only the current run's results are reported (its method keys, subjects, prompts, seeds and
metric keys; see :mod:`.store`). One row per method (and per split when the prompts have
several, e.g. FastFace's realistic / stylistic, plus ``all``), metric columns in the order of
InstantPortrait Table 1 (face similarity, CLIP-T, HPS, Q-Align quality / aesthetic,
Intra-LPIPS, model size, inference steps) then the others. Item metrics show ``mean ± std``
(sample std) and ``n``; FFC the count of items whose reference or output shows no face over
all items, failed generations included and said; group metrics (Intra-LPIPS) the mean over
groups; set metrics (FID, FD-DINOv2) their value with the sample counts; unavailable metrics
are marked and their reason listed.

``pareto.png`` plots face similarity against text fidelity per method on the split holding
every prompt (``all``, or the protocol's only split), like FastFace Fig. 8: methods sharing a
model and differing in one setting (a sweep of steps, guidance...) are joined in the order of
that setting, and the Pareto front (no other method better on both axes) is drawn.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..writer import atomic_write
from . import metrics as M
from .protocols import DEFAULT_SPLIT
from .store import ResultStore

__all__ = [
    "FACE_AXIS",
    "TEXT_AXIS",
    "Cell",
    "current_rows",
    "overall_split",
    "sample_stats",
    "summarize",
    "write_report",
]

#: Preferred metrics for the Pareto plot's axes, first available wins.
FACE_AXIS = ("face_sim_arcface", "face_sim_facenet", "face_sim_dlib")
TEXT_AXIS = ("clip_t_vitg14", "clip_t_vith14", "clip_t_vitl14", "hps_v2")


@dataclass
class Cell:
    """One metric of one (method, split): the aggregate and how it was obtained."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    total: int | None = None  # FFC: outputs counted
    failed: int = 0
    status: str = "ok"  # ok | unavailable | no data
    error: str | None = None
    generation_failed: int = 0  # FFC: counted items whose output could not be generated
    detail: dict | None = None  # set metrics: sample counts

    def note(self) -> str:
        """What the report adds after the value: generation failures, FD sample counts."""
        parts = []
        if self.generation_failed:
            parts.append(f"incl. {self.generation_failed} generation failures")
        if self.detail and "n_outputs" in self.detail:
            d = self.detail
            warn = "; fewer samples than dims: biased" if d.get("biased") else ""
            parts.append(f"n={d['n_outputs']} vs {d['n_references']} refs, {d['dim']}-D{warn}")
        return f" ({'; '.join(parts)})" if parts else ""

    def text(self, metric: str) -> str:
        """The cell as the markdown table shows it."""
        if self.status == "unavailable":
            return "unavailable"
        if self.mean is None:
            return "failed" if self.failed else "—"
        m = M.METRICS.get(metric)
        if metric == "params":
            return _human(self.mean)
        if metric == "steps":
            return f"{self.mean:g}"
        if m is not None and m.aggregate == "sum":
            return f"{int(self.mean)} / {self.total}"
        if self.std is None or self.n < 2:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {self.std:.4f}"


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:g}"


def sample_stats(values: list[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (``n - 1`` in the denominator; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def _splits(store: ResultStore) -> list[str]:
    prompts = store.prompts()
    order = sorted(prompts.values())
    splits = list(dict.fromkeys(s for _, s in order))
    return splits + [DEFAULT_SPLIT] if len(splits) > 1 else (splits or [DEFAULT_SPLIT])


def overall_split(store: ResultStore) -> str:
    """The split holding every prompt: ``all`` when there are several, else the only one."""
    return _splits(store)[-1]


def requested_metrics(store: ResultStore) -> list[str]:
    """The metrics of the current run (requested ones, then any other with a key), in the
    report's order."""
    meta = store.meta()
    names = list(meta.get("config", {}).get("metrics", []))
    names += [m for m in meta.get("run", {}).get("metrics", {}) if m not in names]
    return M.ordered([n for n in dict.fromkeys(names)])


def current_rows(store: ResultStore) -> dict[str, list]:
    """The current run's rows (``meta.run``: its method keys, subjects with their
    fingerprints, prompts, seeds and metric keys), by method *name*. Group and set rows
    count only when their stored member set is the one the current outputs give."""
    from .aggregates import group_members, members_hash, set_members, split_groups

    run = store.meta().get("run", {})
    methods = run.get("methods", {})
    subjects = run.get("subjects", {})
    prompts = set(run.get("prompts", []))
    seeds = set(run.get("seeds", []))
    mkeys = run.get("metrics", {})
    groups = split_groups(store.prompts())
    out: dict[str, list] = {}
    for name, key in methods.items():
        ok_outputs = [
            o
            for o in store.outputs(key)
            if o["status"] == "ok"
            and subjects.get(o["face"]) == o["subject_fp"]
            and o["seed"] in seeds
            and o["prompt"] in prompts
        ]
        expected: dict[tuple, str] = {}
        for split, texts in groups:
            chosen = [o for o in ok_outputs if o["prompt"] in texts]
            refs = run.get("references", [])
            expected[("*", "", f"*:{split}", -1)] = members_hash(set_members(chosen, texts, refs))
            for subject, fp in subjects.items():
                for seed in seeds:
                    g = [o for o in chosen if o["face"] == subject and o["seed"] == seed]
                    expected[(subject, fp, f"*:{split}", seed)] = members_hash(
                        group_members(g, texts)
                    )
        keep = []
        for r in store.rows(key):
            if mkeys.get(r.metric) != r.metric_key:
                continue
            spec = M.METRICS.get(r.metric)
            scope = spec.scope if spec else "item"
            if scope == "method":
                keep.append(r)
            elif scope == "item":
                if subjects.get(r.face) == r.subject_fp and r.prompt in prompts and r.seed in seeds:
                    keep.append(r)
            elif expected.get((r.face, r.subject_fp, r.prompt, r.seed)) == r.members:
                keep.append(r)
        out[name] = keep
    return out


def summarize(store: ResultStore) -> dict[tuple[str, str], dict[str, Cell]]:
    """``(method, split) -> metric -> Cell`` for every method of the current run and split."""
    prompts = store.prompts()
    status = store.metric_status()
    metrics = requested_metrics(store)
    by_method = current_rows(store)
    out: dict[tuple[str, str], dict[str, Cell]] = {}
    for method, mrows in by_method.items():
        for split in _splits(store):
            cells: dict[str, Cell] = {}
            for metric in metrics:
                spec = M.METRICS.get(metric)
                scope = spec.scope if spec else "item"
                if scope == "item":
                    sel = [
                        r
                        for r in mrows
                        if r.metric == metric
                        and (split == DEFAULT_SPLIT or prompts.get(r.prompt, (0, ""))[1] == split)
                    ]
                elif scope == "method":
                    sel = [r for r in mrows if r.metric == metric and r.prompt == "*"]
                else:
                    sel = [r for r in mrows if r.metric == metric and r.prompt == f"*:{split}"]
                ok = [r.value for r in sel if r.status == "ok" and r.value is not None]
                failed = [r for r in sel if r.status == "failed"]
                cell = Cell(n=len(ok), failed=len(failed))
                if failed:
                    cell.error = failed[0].error
                if ok:
                    if spec is not None and spec.aggregate == "sum":
                        cell.mean, cell.total = float(sum(ok)), len(ok)
                        cell.generation_failed = sum(
                            1 for r in sel if r.error == "generation failed"
                        )
                    elif scope == "set":
                        best = next(r for r in sel if r.status == "ok")
                        cell.mean, cell.n = float(best.value), int(best.n or 0)
                        cell.detail = best.detail
                    else:
                        cell.mean, cell.std = sample_stats(ok)
                st = status.get(metric)
                if st is not None and st[0] == "unavailable" and not ok:
                    cell.status, cell.error = "unavailable", st[1]
                elif not ok:
                    cell.status = "no data"
                cells[metric] = cell
            out[(method, split)] = cells
    return out


def _header(metric: str) -> str:
    m = M.METRICS.get(metric)
    if m is None:
        return metric
    arrow = {True: " ↑", False: " ↓", None: ""}[m.higher_is_better]
    return f"{m.label}{arrow}"


def _write_csv(path: Path, table, metrics: list[str], methods: dict[str, Any]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # the csv module's default ends rows in \r\n
    head = ["method", "split", "spec"]
    for m in metrics:
        head += [m, f"{m}_std", f"{m}_n", f"{m}_status", f"{m}_note"]
    w.writerow(head)
    for (method, split), cells in table.items():
        row: list[Any] = [method, split, methods.get(method, {}).get("spec", "")]
        for m in metrics:
            c = cells[m]
            row += [
                "" if c.mean is None else f"{c.mean:.6g}",
                "" if c.std is None else f"{c.std:.6g}",
                c.total if c.total is not None else c.n,
                c.status if c.mean is None or c.status != "ok" else "ok",
                c.note().strip(" ()"),
            ]
        w.writerow(row)
    data = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _write_md(path: Path, store: ResultStore, table, metrics: list[str], figures: dict) -> None:
    meta = store.meta()
    cfg = meta.get("config", {})
    prompts = store.prompts()
    methods = run_methods(store)
    outputs = run_outputs(store)
    lines = ["# Evaluation report", ""]
    lines.append(
        f"Protocol: **{meta.get('protocol') or 'custom'}** · subjects: "
        f"{len(cfg.get('faces', []))} · prompts: {len(prompts)} · seeds: "
        f"{len(cfg.get('seeds', []))} · methods: {len(methods)} · outputs: "
        f"{sum(o['status'] == 'ok' for o in outputs)} ok, "
        f"{sum(o['status'] == 'failed' for o in outputs)} failed to generate"
    )
    lines.append("")
    lines.append(
        f"Only this run's results are shown: each is keyed by the method's settings, dtype "
        f"and model (method keys in the Methods table), the subject's photo contents, the "
        f"prompt, the seed and the metric with its model and text template "
        f"(`{cfg.get('text_template', '{prompt}')}`)."
    )
    lines.append("")
    splits = list(dict.fromkeys(s for _, s in table))
    for split in splits:
        if len(splits) > 1:
            lines += [f"## Split: {split}", ""]
        elif split != DEFAULT_SPLIT:
            lines += [f"## Results (split: {split})", ""]
        else:
            lines += ["## Results", ""]
        lines.append("| Method | " + " | ".join(_header(m) for m in metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for (method, s), cells in table.items():
            if s != split:
                continue
            vals = []
            for m in metrics:
                c = cells[m]
                txt = c.text(m)
                spec = M.METRICS.get(m)
                if (
                    c.mean is not None
                    and spec
                    and spec.scope == "item"
                    and spec.aggregate == "mean"
                ):
                    txt += f" (n={c.n})"
                txt += c.note()
                if c.failed:
                    txt += f" [{c.failed} failed]"
                vals.append(_md_escape(txt))
            lines.append(f"| {_md_escape(method)} | " + " | ".join(vals) + " |")
        lines.append("")
        # what a method reports about how its numbers were made (e.g. no held-out photos)
        for name, info in methods.items():
            if info.get("settings", {}).get("caveat"):
                lines += [f"**Note on {name}**: {info['settings']['caveat']}", ""]
    status = store.metric_status()
    unavailable = {m: r for m, (s, r) in status.items() if s == "unavailable" and m in metrics}
    if unavailable:
        lines += ["## Unavailable metrics", ""]
        for m, reason in unavailable.items():
            lines.append(f"- **{m}**: {reason}")
        lines.append("")
    failures = []
    for name in methods:
        bad = [o for o in outputs if o["method"] == name and o["status"] == "failed"]
        if bad:
            failures.append(f"- **{name}**: {len(bad)} outputs failed (first: {bad[0]['error']})")
    first_fail: dict[tuple[str, str], tuple[int, str]] = {}
    for name, rows in current_rows(store).items():
        for r in rows:
            if r.status == "failed":
                k = (name, r.metric)
                cnt, err = first_fail.get(k, (0, r.error or ""))
                first_fail[k] = (cnt + 1, err)
    for (method, metric), (cnt, err) in first_fail.items():  # method: a name here
        failures.append(f"- **{method}** / {metric}: failed on {cnt} items (first: {err})")
    if failures:
        lines += ["## Failures", "", *failures, ""]
    lines += [
        "## Methods",
        "",
        "| Method | SPEC | Key | Parameters | Steps |",
        "|---|---|---|---|---|",
    ]
    for name, info in methods.items():
        cost = info.get("cost") or {}
        params = cost.get("params")
        lines.append(
            f"| {_md_escape(name)} | `{_md_escape(info['spec'])}` | `{info.get('key', '')}` | "
            f"{_human(params) if params is not None else '—'} | {cost.get('steps', '—')} |"
        )
    lines.append("")
    lines += ["## Metrics", ""]
    for m in metrics:
        spec = M.METRICS.get(m)
        if spec is not None:
            lines.append(f"- **{m}** ({spec.label}): {spec.paper}.")
    lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for title, (name, note) in figures.items():
            lines.append(f"![{title}]({name})" if name else f"- {title}: {note}")
            if name and note:
                lines.append(f"\n{note}")
            lines.append("")
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def run_methods(store: ResultStore) -> dict[str, dict[str, Any]]:
    """The current run's methods (name -> store record with its ``key``), in run order."""
    run = store.meta().get("run", {}).get("methods", {})
    stored = store.methods()
    return {n: stored[n] for n in run if n in stored and stored[n]["key"] == run[n]}


def run_outputs(store: ResultStore) -> list[dict[str, Any]]:
    """The current run's outputs, each with ``method`` set to the method's *name*."""
    run = store.meta().get("run", {})
    subjects = run.get("subjects", {})
    prompts = set(run.get("prompts", []))
    seeds = set(run.get("seeds", []))
    out = []
    for name, key in run.get("methods", {}).items():
        for o in store.outputs(key):
            if (
                subjects.get(o["face"]) == o["subject_fp"]
                and o["prompt"] in prompts
                and o["seed"] in seeds
            ):
                out.append({**o, "method": name})
    return out


def write_report(folder: str | os.PathLike, store: ResultStore | None = None) -> Path:
    """Write ``report.md``, ``report.csv``, ``pareto.png`` and ``contact_sheet.png`` into
    ``folder`` from its store; returns the path of ``report.md``."""
    from .figures import contact_sheet, pareto_plot

    folder = Path(folder)
    own = store is None
    store = store or ResultStore(folder)
    try:
        table = summarize(store)
        metrics = requested_metrics(store)
        _write_csv(folder / "report.csv", table, metrics, store.methods())
        figures: dict[str, tuple[str | None, str]] = {}
        try:
            note = pareto_plot(folder / "pareto.png", store, table)
            figures["Pareto: identity vs text fidelity"] = ("pareto.png", note)
        except Exception as exc:  # noqa: BLE001 - a figure never stops the report
            figures["Pareto: identity vs text fidelity"] = (None, f"not drawn: {exc}")
        try:
            note = contact_sheet(folder / "contact_sheet.png", store, folder)
            figures["Contact sheet"] = ("contact_sheet.png", note)
        except Exception as exc:  # noqa: BLE001
            figures["Contact sheet"] = (None, f"not drawn: {exc}")
        fastface = any(
            str(m.get("spec", "")).startswith("fastface") for m in run_methods(store).values()
        )
        if fastface or store.meta().get("protocol") == "fastface":
            from .fastface_report import write_fastface_tables

            title = "FastFace Tables 1-3 (published rows beside this run)"
            try:
                write_fastface_tables(folder, store, table)
                figures[title] = (None, "in fastface_tables.md")
            except Exception as exc:  # noqa: BLE001 - a side table never stops the report
                figures[title] = (None, f"not written: {exc}")
        _write_md(folder / "report.md", store, table, metrics, figures)
    finally:
        if own:
            store.close()
    return folder / "report.md"
