"""FastFace's Tables 1-3 with the published rows beside a run's rows (``fastface_tables.md``).

The published rows ship as cited reference data (``protocols/fastface_reference.json``,
transcribed from Karpukhin et al. 2025, arXiv 2505.21144). A run's rows are its ``fastface``
methods, one per (family, preset, ``ip_adapter_scale``), with the LoRA scales 1.0 and 0.5 as
the paper's column groups. Table 1 is the joint set (the report's ``all`` split), Table 2 the
stylistic split (ID, CLIP, IR, FCS; LoRA 1.0), Table 3 the realistic split.

Where the harness's metrics differ from the paper's code the file says so (face detector,
FSC crop and scaling, aesthetic checkpoint, CLIP resize), and each of the run's columns names
the metric it shows (``ID`` falls back to dlib's ResNet when no ArcFace weights were given).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..writer import atomic_write
from .protocols import DEFAULT_SPLIT
from .report import Cell, run_methods, summarize
from .store import ResultStore

__all__ = [
    "COLUMN_METRICS",
    "fastface_rows",
    "fastface_tables_md",
    "load_reference",
    "write_fastface_tables",
]

#: The paper's columns -> the harness's metrics, first available wins.
COLUMN_METRICS: dict[str, tuple[str, ...]] = {
    "ID": ("face_sim_arcface", "face_sim_dlib"),
    "CLIP": ("clip_t_vitl14",),
    "AE": ("laion_aesthetic",),
    "FFC": ("ffc",),
    "IR": ("imagereward",),
    "FCS": ("fsc_official", "fsc_paper", "fsc"),
}
#: Table -> (reference key, split in the paper, the run's split, columns, LoRA scales).
TABLES = {
    "table1": ("Table 1", "joint", DEFAULT_SPLIT, ("ID", "CLIP", "AE", "FFC"), (1.0, 0.5)),
    "table2": ("Table 2", "stylistic", "stylistic", ("ID", "CLIP", "IR", "FCS"), (1.0,)),
    "table3": ("Table 3", "realistic", "realistic", ("ID", "CLIP", "AE", "FFC"), (1.0, 0.5)),
}
_SETTING_LABEL = {
    "baseline": "base",
    "am1": "+ AM1",
    "am1_paper": "+ AM1 (paper scales)",
    "am2": "+ AM2",
    "am2_noadain": "+ AM2 (no AdaIN)",
    "dcg": "+ DCG",
    "fastface-am1": "+ FF_AM1",
    "fastface-am2": "+ FF_AM2",
}
FAMILY_ORDER = ("hyper", "lightning", "lcm", "turbo")

DIFFERENCES = [
    "**Face detector (ID, FFC).** The paper's code detects with insightface buffalo_l's SCRFD "
    "(det_10g), retrying input sizes 640 to 320; the harness detects with dlib by default (HOG, "
    "with upsampling retries; five points from its 68 landmarks), or with the same SCRFD and "
    "its keypoints at 640 (`--detector scrfd --detector-weights det_10g.onnx`, or `--weights "
    "face-detector=buffalo_l/`), then crops as insightface's `norm_crop`. With dlib, borderline "
    "faces (small, stylised, profile) can be found by one and not the other, so FFC and the set "
    "ID is averaged over can differ.",
    "**ID embedder.** `face_sim_arcface` with insightface's `w600k_r50.onnx` (buffalo_l) is the "
    "paper's; without it the column shows `face_sim_dlib` (dlib's ResNet, offline), whose "
    "values are on another scale (same-person similarities around 0.9): compare methods within "
    "the run, not with the published rows.",
    "**FCS/FSC crop and scaling.** The paper crops with facenet-pytorch MTCNN (160 px) and, by a "
    "bug in its code, feeds the 0-255 crop to a [-1, 1] preprocessing. `fsc_official` "
    "reproduces that scaling on a dlib detection box (160 px) and `prompt.split(';')[0]`; "
    "`fsc_paper` is the same with correct scaling; `fsc` (ours) uses the aligned face chip and "
    "the style part only. Only `fsc_official` is on the paper's scale (about 0.17-0.18).",
    "**Aesthetic (AE).** The paper cites LAION's linear aesthetic predictor; its code (which "
    "produced the tables) uses the improved-aesthetic-predictor MLP `ava+logos-l14-linearMSE"
    ".pth`. The harness runs whichever checkpoint `--weights laion-aesthetic=FILE` names (v2 MLP "
    "or v1 linear head); use the code's file to compare.",
    "**CLIP.** Same model (OpenAI ViT-L/14) and text (the full prompt); the harness resizes "
    "with antialiased bicubic on [0, 1] images, the code with torchvision's bicubic on tensors: "
    "differences in the third decimal.",
    "**ImageReward (IR)** is an optional extra (`pip install 'instantportrait[imagereward]'`); "
    "without it the column is `unavailable`.",
]


def load_reference() -> dict[str, Any]:
    """The published rows (``protocols/fastface_reference.json``) with their citation."""
    path = resources.files("instantportrait") / "protocols" / "fastface_reference.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _family(settings: dict[str, Any]) -> str:
    from ..pipelines.fastface_presets import FAMILIES

    model = str(settings.get("model") or "")
    return model if model in FAMILIES else str(settings.get("family") or Path(model).name or "?")


def fastface_rows(
    store: ResultStore, table: dict[tuple[str, str], dict[str, Cell]] | None = None
) -> list[dict[str, Any]]:
    """The run's ``fastface`` methods: ``{"name", "family", "setting", "ip_adapter_scale",
    "lora_scale", "cells": {split: {metric: Cell}}}`` in run order."""
    table = table if table is not None else summarize(store)
    rows = []
    for name, info in run_methods(store).items():
        if not str(info.get("spec", "")).startswith("fastface"):
            continue
        st = info.get("settings") or {}
        rows.append(
            {
                "name": name,
                "family": _family(st),
                "setting": str(st.get("preset", "fastface-am1")),
                "ip_adapter_scale": float(st.get("ip_adapter_scale", 0.8)),
                "lora_scale": float(st.get("lora_scale", 1.0)),
                "cells": {s: c for (m, s), c in table.items() if m == name},
            }
        )
    return rows


def _value(cells: dict[str, Cell], column: str) -> tuple[str, str | None]:
    for metric in COLUMN_METRICS[column]:
        cell = cells.get(metric)
        if cell is None or cell.mean is None:
            continue
        if column == "FFC":
            return f"{int(cell.mean)} / {cell.total}", metric
        return f"{cell.mean:.3f}", metric
    found = [cells[m] for m in COLUMN_METRICS[column] if m in cells]
    failed = next((c for c in found if c.failed), None)
    if failed is not None:  # e.g. ID where no output face was found
        return f"failed ({failed.failed})", None
    if found and all(c.status == "unavailable" for c in found):
        return "unavailable", None
    return "—", None


def _published(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:g}" if isinstance(value, int) else f"{value:.3f}"


def _table_md(key: str, reference: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    title, paper_split, split, columns, loras = TABLES[key]
    ref = reference["tables"][key]
    header = ["Model", "Source"]
    for lora in loras:
        header += [f"{c} (lora {lora:.1f})" if len(loras) > 1 else c for c in columns]
    lines = [
        f"## {title}: {ref['description']} (our split: `{split}`)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    used: dict[str, set[str]] = {}
    published: dict[tuple[str, str], dict[float, dict]] = {}
    for r in ref["rows"]:
        published.setdefault((r["family"], r["setting"]), {})[float(r["lora_scale"])] = r
    ours: dict[tuple[str, str, float], dict[float, dict]] = {}
    for r in rows:
        if split in r["cells"]:
            ours.setdefault((r["family"], r["setting"], r["ip_adapter_scale"]), {})[
                r["lora_scale"]
            ] = r
    families = list(FAMILY_ORDER) + sorted({f for f, *_ in ours} - set(FAMILY_ORDER))
    for family in families:
        for (fam, _setting), by_lora in published.items():
            if fam != family:
                continue
            label = next(iter(by_lora.values()))["label"]
            cells = []
            for lora in loras:
                r = by_lora.get(lora, {})
                cells += [_published(r.get(c)) for c in columns]
            lines.append(f"| {label} | paper (λ 0.8) | " + " | ".join(cells) + " |")
        for (fam, setting, ips), by_lora in ours.items():
            if fam != family or not any(lora in by_lora for lora in loras):
                continue
            label = f"{family.capitalize()} {_SETTING_LABEL.get(setting, setting)}"
            names = ", ".join(by_lora[lo]["name"] for lo in loras if lo in by_lora)
            cells = []
            for lora in loras:
                r = by_lora.get(lora)
                for c in columns:
                    if r is None:
                        cells.append("—")
                        continue
                    text, metric = _value(r["cells"][split], c)
                    if metric is not None:
                        used.setdefault(c, set()).add(metric)
                    cells.append(text)
            lines.append(
                f"| **{label}** | this run (λ {ips:g}; {names}) | " + " | ".join(cells) + " |"
            )
    lines.append("")
    if used:
        shown = "; ".join(f"{c} = `{', '.join(sorted(m))}`" for c, m in used.items())
        lines += [f"This run's columns: {shown}.", ""]
    if not ours:
        lines += ["(no `fastface` method of this run has results on this split)", ""]
    return lines


def fastface_tables_md(
    store: ResultStore, table: dict[tuple[str, str], dict[str, Cell]] | None = None
) -> str:
    """The markdown of ``fastface_tables.md``: Tables 1-3 (published rows and the run's), the
    citation and where the metrics differ from the paper's."""
    reference = load_reference()
    rows = fastface_rows(store, table)
    lines = [
        "# FastFace tables: published rows beside this run",
        "",
        f"Published rows: {reference['source']}",
        "",
        "Paper columns: " + "; ".join(f"**{k}**: {v}" for k, v in reference["metrics"].items()),
        "",
        "FFC is a count over the set (the paper's sets: 6480 joint, 2160 stylistic, 4320 "
        "realistic images); this run's FFC is shown as count / items.",
        "",
    ]
    for key in TABLES:
        lines += _table_md(key, reference, rows)
    lines += ["## Where this harness's metrics differ from the paper's", ""]
    lines += [f"- {d}" for d in DIFFERENCES]
    lines.append("")
    return "\n".join(lines)


def write_fastface_tables(
    folder: str | Path,
    store: ResultStore,
    table: dict[tuple[str, str], dict[str, Cell]] | None = None,
) -> Path:
    """Write ``fastface_tables.md`` into ``folder``; returns its path."""
    path = Path(folder) / "fastface_tables.md"
    text = fastface_tables_md(store, table)
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path
