"""Papers' tables with their published rows beside ours.

A reference file ``protocols/<paper>_reference.json`` holds a paper's published numbers
(FaceA-Net Tables 1-2, FPGA Tables 1-3), cited, never reproduced. :func:`paper_table` lays
out one of those tables as the paper does -- its columns, its rows marked *published* -- and
appends the current run's methods of an evaluation folder as rows marked *ours*, the values
read from its results store and put in the paper's units (cosines x 100; FID as is).

Our column values come from the first metric of :data:`COLUMN_METRICS` the run scored, and
the table names it: the papers' metric models are not always ours (e.g. FaceA-Net's FaceNet
crops, FPGA's ArcFace), so the metric is printed beside each value.

``instantportrait evaluate ... --paper-table faceanet:table1`` writes it as
``OUT/paper-faceanet-table1.md`` and prints it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["COLUMN_METRICS", "PaperTable", "list_paper_tables", "load_paper_table", "paper_table"]

#: A paper column -> our metrics that measure it, in order of preference.
COLUMN_METRICS: dict[str, tuple[str, ...]] = {
    "clip_t": ("clip_t_vitb32", "clip_t_vitl14", "clip_t_vith14", "clip_t_vitg14"),
    "clip_i": ("clip_i",),
    "dino": ("dino",),
    "face_sim": ("face_sim_facenet", "face_sim_arcface", "face_sim_dlib"),
    "fid": ("fid",),
    "fid_face": ("fid_face",),
}
#: Per paper, the preferred metric where it differs from :data:`COLUMN_METRICS`' order.
PAPER_PREFERENCE: dict[str, dict[str, tuple[str, ...]]] = {
    "fpga": {"face_sim": ("face_sim_arcface", "face_sim_facenet", "face_sim_dlib")},
}
#: Columns reported as distances (not scaled by 100).
UNSCALED = {"fid", "fid_face"}
LABELS = {
    "clip_t": "CLIP-T",
    "clip_i": "CLIP-I",
    "dino": "DINO",
    "face_sim": "Face Sim",
    "fid": "FID ↓",
    "fid_face": "FID (faces) ↓",
}


@dataclass
class PaperTable:
    """One published table: its title, columns, rows and the source to cite."""

    paper: str
    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    source: str
    note: str = ""


def _reference(paper: str) -> dict[str, Any]:
    path = resources.files("instantportrait") / "protocols" / f"{paper}_reference.json"
    if not path.is_file():
        raise InputError(f"--paper-table {paper}: no published tables for this paper")
    return json.loads(path.read_text(encoding="utf-8"))


def list_paper_tables() -> list[str]:
    """``paper:table`` names of every shipped published table."""
    names = []
    for paper in ("faceanet", "fpga"):
        data = _reference(paper)
        if "tables" in data:
            names += [f"{paper}:{k}" for k in data["tables"]]
        else:
            names += [f"{paper}:{k}" for k in data if k.startswith("table") and k[5:].isdigit()]
    return names


def load_paper_table(name: str) -> PaperTable:
    """The published table ``paper:table`` (e.g. ``faceanet:table1``,
    ``fpga:single_id_full_body``)."""
    paper, _, key = name.partition(":")
    data = _reference(paper)
    source = str(data.get("source", ""))
    if "tables" in data:  # FPGA's layout: tables with their own rows
        t = data["tables"].get(key)
        if t is None:
            raise InputError(f"--paper-table {name}: one of {', '.join(list_paper_tables())}")
        cols = [c for c in data["columns"] if any(c in r for r in t["rows"])]
        title = f"Table {t.get('table')}: {key.replace('_', ' ')} ({t.get('dataset', '')})"
        note = " ".join(str(n) for n in (data.get("note"), t.get("note")) if n)
        return PaperTable(paper, key, title, cols, t["rows"], source, note)
    rows = data.get(key)
    if not isinstance(rows, list):
        raise InputError(f"--paper-table {name}: one of {', '.join(list_paper_tables())}")
    cols = [c for c in data["columns"] if any(c in r for r in rows)]
    note = str(data.get(f"{key}_note", data.get("note", "")))
    return PaperTable(paper, key, f"Table {key[5:]}", cols, rows, source, note)


def _row_label(row: dict[str, Any]) -> str:
    label = str(row.get("method") or row.get("setting") or "?")
    if row.get("diir"):
        label += " + DIIR"
    return label


def _ours(out: Path, table: PaperTable) -> tuple[list[tuple[str, dict[str, str]]], dict]:
    from .report import overall_split, run_methods, summarize
    from .store import ResultStore

    if not (out / "results.sqlite").is_file():
        raise InputError(f"{out}: no results store (run evaluate into it first)")
    store = ResultStore(out)
    try:
        cells = summarize(store)
        split = overall_split(store)
        methods = run_methods(store)
    finally:
        store.close()
    prefs = {**COLUMN_METRICS, **PAPER_PREFERENCE.get(table.paper, {})}
    used: dict[str, str] = {}
    rows = []
    for name, record in methods.items():
        mcells = cells.get((name, split), {})
        values: dict[str, str] = {}
        for col in table.columns:
            for metric in prefs.get(col, ()):
                cell = mcells.get(metric)
                if cell is not None and cell.mean is not None:
                    scale = 1.0 if col in UNSCALED else 100.0
                    values[col] = f"{cell.mean * scale:.1f}"
                    used.setdefault(col, metric)
                    break
                if cell is not None and cell.failed and col not in values:
                    values[col] = f"failed ({cell.failed})"  # scored, no value: say so
                    used.setdefault(col, metric)
        restored = str(record["spec"]).startswith("restore") and "diir" not in name.lower()
        label = name + (" + DIIR" if restored else "")
        rows.append((label, values))
    return rows, used


def paper_table(out: str | os.PathLike, name: str) -> str:
    """The markdown of published table ``name`` with the run in ``out`` appended as *ours*."""
    table = load_paper_table(name)
    ours, used = _ours(Path(out), table)
    head = ["Method", *(LABELS.get(c, c) for c in table.columns), "Source"]
    lines = [
        f"### {table.paper} {table.title}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in table.rows:
        vals = [("—" if row.get(c) is None else f"{row[c]:g}") for c in table.columns]
        lines.append(f"| {_row_label(row)} | " + " | ".join(vals) + " | published |")
    for label, values in ours:
        vals = [values.get(c, "—") for c in table.columns]
        lines.append(f"| {label} | " + " | ".join(vals) + " | ours |")
    metrics = ", ".join(f"{LABELS.get(c, c)} = `{m}`" for c, m in used.items()) or "none scored"
    lines += [
        "",
        f"Published rows: {table.source} (cited, not reproduced). Ours: {metrics}; cosines "
        "x 100. The papers' test photos and metric models differ from ours, so the rows are "
        "comparable in layout, not in value.",
    ]
    if table.note:
        lines += ["", f"Note (reference file): {table.note}"]
    return "\n".join(lines) + "\n"
