"""The report's figures: the Pareto plot of identity against text fidelity (FastFace Fig. 8),
with sweeps joined in the order of the setting they vary, and the contact sheet of inputs and
outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..writer import atomic_write, save_image
from . import metrics as M
from .report import (
    FACE_AXIS,
    TEXT_AXIS,
    Cell,
    overall_split,
    run_methods,
    run_outputs,
    summarize,
)
from .store import ResultStore

__all__ = ["contact_sheet", "pareto_front", "pareto_plot"]


def _axis_metric(cells_by_method: dict[str, dict[str, Cell]], candidates) -> str | None:
    for m in candidates:
        if any(c.get(m) and c[m].mean is not None for c in cells_by_method.values()):
            return m
    return None


def _sweeps(methods: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Methods sharing kind and model, ordered by the one setting in which they differ."""
    from .methods import parse_method_spec

    groups: dict[tuple[str, str | None], list[tuple[str, Any]]] = {}
    for name, info in methods.items():
        try:
            spec = parse_method_spec(info["spec"])
        except Exception:  # noqa: BLE001 - an odd spec just is not part of a sweep
            continue
        groups.setdefault((spec.kind, spec.path), []).append((name, spec))
    sweeps = []
    for (kind, _), members in groups.items():
        if len(members) < 2:
            continue
        keys = sorted({k for _, s in members for k in s.options})
        varying = [k for k in keys if len({repr(s.options.get(k)) for _, s in members}) > 1]
        # several settings vary (FastFace: ip_adapter_scale x lora_scale): one curve per value
        # of the others, along the one with the most values (Fig. 8: a curve per LoRA scale)
        if not varying:
            continue
        along = max(varying, key=lambda k: len({repr(s.options.get(k)) for _, s in members}))
        fixed = [k for k in varying if k != along]
        curves: dict[str, list[tuple[str, Any]]] = {}
        for member in members:
            label = ", ".join([along] + [f"{k}={member[1].options.get(k)}" for k in fixed])
            curves.setdefault(label or kind, []).append(member)

        def order(member, along=along):
            v = member[1].options.get(along)
            return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))

        for label, curve in curves.items():
            if len(curve) > 1:
                sweeps.append((label, [n for n, _ in sorted(curve, key=order)]))
    return sweeps


def pareto_front(points: dict[str, tuple[float, ...]]) -> list[str]:
    """The names whose ``(x, y)`` no other point dominates (at least as good on both axes,
    better on one; both axes higher-is-better)."""
    return [
        n
        for n, p in points.items()
        if not any(q[0] >= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in points.values())
    ]


def pareto_plot(path: Path, store: ResultStore, table=None) -> str:
    """Face similarity vs text fidelity per method (FastFace Fig. 8 style); returns a note."""
    from ..errors import optional_import

    optional_import("matplotlib", "eval", "the Pareto plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = table if table is not None else summarize(store)
    split = overall_split(store)
    cells = {m: c for (m, s), c in table.items() if s == split}
    fx = _axis_metric(cells, FACE_AXIS)
    fy = _axis_metric(cells, TEXT_AXIS)
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    note = ""
    points = {}
    if fx and fy:
        for name, c in cells.items():
            if c[fx].mean is not None and c[fy].mean is not None:
                points[name] = (c[fx].mean, c[fy].mean, c[fx].std or 0.0, c[fy].std or 0.0)
    if points:
        for name, (x, y, sx, sy) in points.items():
            ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="o", capsize=3, alpha=0.9)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        for label, names in _sweeps(run_methods(store)):
            pts = [points[n] for n in names if n in points]
            if len(pts) > 1:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", alpha=0.5, label=label)
        front = sorted((points[n] for n in pareto_front(points)), key=lambda p: p[0])
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        left_out = [n for n in cells if n not in points]
        if left_out:
            note = f"not plotted (no values on both axes): {', '.join(left_out)}"
            fig.text(0.01, 0.01, note, fontsize=7, color="0.4")
        ax.set_xlabel(f"{M.METRICS[fx].label} (identity) →")
        ax.set_ylabel(f"{M.METRICS[fy].label} (text fidelity) →")
    else:
        missing = [n for n, m in (("face similarity", fx), ("text fidelity", fy)) if m is None]
        note = (
            f"no values for {' and '.join(missing) or 'both axes'} yet "
            f"(face metrics: {', '.join(FACE_AXIS)}; text metrics: {', '.join(TEXT_AXIS)})"
        )
        ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=9)
        ax.set_xlabel("face similarity →")
        ax.set_ylabel("text fidelity →")
    ax.set_title(f"Identity vs text fidelity (split: {split})")
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return note


def contact_sheet(
    path: Path,
    store: ResultStore,
    folder: Path,
    max_faces: int = 6,
    max_prompts: int = 4,
    thumb: int = 128,
) -> str:
    """A grid of inputs and outputs: a row per face (first seed), the input, then each method's
    outputs for the first ``max_prompts`` prompts. Returns a note (what was left out)."""
    from PIL import Image, ImageDraw, ImageFont

    from ..io import load_image

    meta = store.meta().get("config", {})
    subjects = meta.get("subjects") or [
        {"name": Path(f).stem, "identities": [{"photos": [f]}]} for f in meta.get("faces", [])
    ]
    faces = [(s["name"], Path(s["identities"][0]["photos"][0])) for s in subjects][:max_faces]
    seeds = meta.get("seeds", [0])
    seed = seeds[0] if seeds else 0
    prompts = sorted(store.prompts().items(), key=lambda kv: kv[1][0])[:max_prompts]
    methods = list(run_methods(store))
    outputs = {(o["method"], o["face"], o["prompt"], o["seed"]): o for o in run_outputs(store)}
    cols = 1 + len(methods) * len(prompts)
    label_h = 40
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (cols * thumb, label_h + max(1, len(faces)) * thumb), "white")
    draw = ImageDraw.Draw(sheet)
    width = max(8, thumb // 6)  # characters per label line

    def fit(im):
        scale = thumb / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        tile = Image.new("RGB", (thumb, thumb), (235, 235, 235))
        tile.paste(im, ((thumb - im.width) // 2, (thumb - im.height) // 2))
        return tile

    def blank(text: str):
        tile = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        ImageDraw.Draw(tile).text((6, thumb // 2 - 6), text, fill="black", font=font)
        return tile

    draw.text((4, 2), "input", fill="black", font=font)
    for j, method in enumerate(methods):
        for k, (ptext, (pidx, _)) in enumerate(prompts):
            x = (1 + j * len(prompts) + k) * thumb + 4
            draw.text((x, 2), method[:width], fill="black", font=font)
            words = f"{pidx}: {ptext}"
            for line_no in range(2):
                part = words[line_no * width : (line_no + 1) * width]
                draw.text((x, 14 + 12 * line_no), part, fill=(80, 80, 80), font=font)
    for i, (subject_name, face) in enumerate(faces):
        y = label_h + i * thumb
        try:
            sheet.paste(fit(load_image(face)), (0, y))
        except Exception:  # noqa: BLE001 - a face that moved away is shown as missing
            sheet.paste(blank("missing"), (0, y))
        for j, method in enumerate(methods):
            for k, (ptext, _) in enumerate(prompts):
                o = outputs.get((method, subject_name, ptext, seed))
                x = (1 + j * len(prompts) + k) * thumb
                if o is None:
                    tile = blank("not run")
                elif o["status"] != "ok" or not o["path"]:
                    tile = blank("failed")
                else:
                    try:
                        tile = fit(load_image(folder / o["path"]))
                    except Exception:  # noqa: BLE001
                        tile = blank("missing")
                sheet.paste(tile, (x, y))
    save_image(sheet, path)
    total_faces = len(meta.get("faces", []))
    total_prompts = len(store.prompts())
    left = []
    if total_faces > len(faces):
        left.append(f"first {len(faces)} of {total_faces} faces")
    if total_prompts > len(prompts):
        left.append(f"first {len(prompts)} of {total_prompts} prompts")
    return f"seed {seed}" + (f"; {', '.join(left)}" if left else "")
