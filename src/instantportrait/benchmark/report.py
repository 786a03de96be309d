"""Reports: the Markdown tables printed by ``instantportrait bench`` and the JSON file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .cases import EDIT_MODES

# ====================================================================== output

SPLIT_KEYS = ("text_encode", "vae_encode", "unet", "vae_decode", "other")


def _fmt(x: float | None) -> str:
    """A figure for the tables: 3 significant digits or so, ``-`` for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    mag = abs(x)
    if mag == 0 or mag >= 100:
        return f"{x:.0f}"
    decimals = 1 if mag >= 10 else 2 if mag >= 1 else 3
    return f"{x:.{decimals}f}"


def format_tables(results: dict[str, Any]) -> str:
    """The results as Markdown tables: modes (plain), options, targets."""
    lines: list[str] = []
    m = results["model"]
    s = results["settings"]
    lines.append(
        f"{m['name']}, {results['machine']['device']} {s['dtype']}, "
        f"median of {s['repeats']} after {s['warmup']} warm-up"
        + (
            f", multi-step modes run {s['max_steps']} steps (rest extrapolated, *)"
            if s.get("max_steps")
            else ""
        )
    )
    withheld = results.get("ratios_meaningful") is False
    ratio = "n/a †" if withheld else None  # what a withheld ratio shows

    def _ratio(x: float | None) -> str:
        return ratio if ratio is not None else _fmt(x)

    edits = [r for r in results["cases"] if "split_s" in r or r["case"] in EDIT_MODES]
    plain = [r for r in edits if r["option"] == "plain" and "split_s" in r]
    if plain:
        lines += [
            "",
            "| mode | size | batch | steps | UNet calls | latency s (min-max) | img/s "
            "| text / enc / UNet / dec / other s | peak GB | x 1-step | ideal x 1-step "
            "| achieved/ideal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in plain:
            lat = r["latency_s"]
            sp = r["split_s"]
            star = " *" if r.get("extrapolated") else ""
            full = r.get("full_length_s", lat["median"])
            latency = (
                f"{_fmt(full)}{star}"
                if r.get("extrapolated")
                else f"{_fmt(lat['median'])} ({_fmt(lat['min'])}-{_fmt(lat['max'])})"
            )
            steps = str(r["steps"])
            if r["steps_run"] != r["steps"]:
                steps += f" ({r['steps_run']} run)"
            split = " / ".join(_fmt(sp[k]) for k in SPLIT_KEYS)
            lines.append(
                f"| {r['case']} | {r['resolution']} | {r['batch_size']} | {steps} "
                f"| {r['unet_calls']} x {r['branches']} | {latency} "
                f"| {_fmt(r['images_per_s'])} | {split} "
                f"| {_fmt(r['peak_memory_gb'])} | {_fmt(r.get('ratio_to_one_step'))} "
                f"| {_ratio(r.get('ideal_ratio_to_one_step'))} | {_ratio(r.get('efficiency'))} |"
            )
    others = [r for r in edits if r["option"] != "plain"]
    if others:
        lines += [
            "",
            "| option | mode | size | batch | latency s | img/s | speed-up vs plain "
            "| achieved/ideal | status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in others:
            if r.get("status") != "measured":
                lines.append(
                    f"| {r['option']} | {r['case']} | {r['resolution']} | {r['batch_size']} "
                    f"| - | - | - | - | {r['reason']} |"
                )
                continue
            lines.append(
                f"| {r['option']} | {r['case']} | {r['resolution']} | {r['batch_size']} "
                f"| {_fmt(r.get('full_length_s', r['latency_s']['median']))} "
                f"| {_fmt(r['images_per_s'])} "
                f"| {_fmt(r.get('speedup_vs_plain'))} | {_ratio(r.get('efficiency'))} "
                "| measured |"
            )
    extra = [r for r in results["cases"] if r not in edits and r.get("status") == "measured"]
    if extra:
        lines += ["", "| case | option | size | batch | figures |", "|---|---|---|---|---|"]
        for r in extra:
            skip = {
                "case",
                "option",
                "resolution",
                "width",
                "height",
                "batch_size",
                "dtype",
                "status",
            }
            figures = ", ".join(
                f"{k}={_fmt(v['median'] if isinstance(v, dict) and 'median' in v else v)}"
                for k, v in r.items()
                if k not in skip
                and (isinstance(v, (int, float)) or (isinstance(v, dict) and "median" in v))
            )
            lines.append(
                f"| {r['case']} | {r['option']} | {r['resolution']} | {r['batch_size']} "
                f"| {figures} |"
            )
    if withheld and edits:
        lines += ["", f"† {results.get('ratios_note', '')}"]
    if results.get("targets"):
        lines += ["", "| target | goal | value | status |", "|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['goal']} | {_fmt(t['value'])} | {t['status']} |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the results as JSON, atomically."""
    from ..writer import atomic_write

    text = json.dumps(results, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
