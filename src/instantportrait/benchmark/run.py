"""Running the suite: build or place the pipeline, apply each option, run every case."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
import time
from typing import Any

import torch

from ..speed import _NO_GPU, PRESETS, applied, resolve_speed
from ..speed import parse_features as parse_option
from .cases import ONE_STEP_MODE, BenchContext, available_cases, measure_components
from .settings import SCHEMA, BenchSettings
from .timing import machine_report, speed_ratio


def build_pipeline(settings: BenchSettings, device: torch.device, dtype: torch.dtype) -> Any:
    """The pipeline to measure: ``settings.model`` loaded, else ``settings.size`` built."""
    from ..components import build_components
    from ..pipelines import InstantPortraitPipeline

    if settings.model:
        pipe = InstantPortraitPipeline.from_pretrained(settings.model)
    else:
        size = "tiny" if settings.size == "tiny" else "instruct-pix2pix"
        pipe = InstantPortraitPipeline(**build_components(size, seed=0))
    pipe.set_progress_bar_config(disable=True)
    return place(pipe, device, dtype)


def place(pipe: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move the pipeline to ``device``/``dtype`` unless it is there already."""
    first = next(pipe.unet.parameters())
    same_device = first.device.type == device.type and (
        device.index is None or first.device.index == device.index
    )
    if not same_device or first.dtype != dtype:
        pipe.to(device=device, dtype=dtype)
    return pipe


#: below this many UNet parameters the components take microseconds to milliseconds, fixed
#: per-call costs (Python, hooks, the scheduler) dominate, and the component clock and the
#: end-to-end time no longer measure the same thing: achieved/ideal read anywhere from 0.06
#: to 3.19 across quiet runs of the tiny components. Their ratios are labelled, not reported.
RATIO_MIN_UNET_PARAMETERS = 100_000_000
#: the label of the ratios withheld at small size (the JSON's ``ratios_note``; the tables' n/a)
SMALL_MODEL_NOTE = (
    "achieved/ideal and ideal x 1-step are not reported for small test components (UNet "
    "below 100M parameters): fixed per-call costs dominate there, so the ratios mean nothing; "
    "measure them with --size real (--quick: 128 px, 4 steps) or a real --model"
)
#: the row fields :data:`SMALL_MODEL_NOTE` withholds
RATIO_FIELDS = ("efficiency", "efficiency_min", "ideal_ratio_to_one_step")


def ratios_meaningful(unet_parameters: int) -> bool:
    """Whether achieved/ideal ratios mean something for a UNet of this size."""
    return unet_parameters >= RATIO_MIN_UNET_PARAMETERS


def withhold_small_model_ratios(results: dict[str, Any]) -> None:
    """At small size, set each row's ratio fields to ``None`` and label the document
    (``ratios_meaningful``, ``ratios_note``); the raw timings (``ideal_s``, the components)
    stay."""
    meaningful = ratios_meaningful(results["model"]["unet_parameters"])
    results["ratios_meaningful"] = meaningful
    results["ratios_note"] = "" if meaningful else SMALL_MODEL_NOTE
    if meaningful:
        return
    for row in results["cases"]:
        for key in RATIO_FIELDS:
            if key in row:
                row[key] = None


def _one_step_ratios(rows: list[dict[str, Any]]) -> None:
    """Add each edit row's time over the 1-step mode's (measured and ideal), per group."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("case") == ONE_STEP_MODE and r.get("status") == "measured":
            groups[(r["option"], r["resolution"], r["batch_size"])] = r
    for r in rows:
        ref = groups.get((r["option"], r["resolution"], r["batch_size"]))
        if r.get("status") != "measured" or ref is None or "full_length_s" not in r:
            continue
        r["ratio_to_one_step"] = speed_ratio(r["full_length_s"], ref["full_length_s"])
        r["ideal_ratio_to_one_step"] = speed_ratio(
            r["ideal_full_length_s"], ref["ideal_full_length_s"]
        )


def _option_speedups(rows: list[dict[str, Any]]) -> None:
    """Add each option row's speed-up over the plain row of the same case, size and batch."""
    plain = {
        (r["case"], r["resolution"], r["batch_size"]): r
        for r in rows
        if r["option"] == "plain" and r.get("status") == "measured"
    }
    for r in rows:
        ref = plain.get((r["case"], r["resolution"], r["batch_size"]))
        if r.get("status") == "measured" and ref is not None:
            r["speedup_vs_plain"] = ref["latency_s"]["median"] / r["latency_s"]["median"]


def gpu_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, met or not, or ``not measured`` with the reason."""
    rows = [r for r in results["cases"] if r.get("status") == "measured"]
    cuda = results["machine"]["device"].startswith("cuda")
    half = [
        r
        for r in rows
        if r["case"] == ONE_STEP_MODE
        and (
            r["dtype"] in ("float16", "bfloat16") or any(o in r["option"] for o in ("fp16", "bf16"))
        )
    ]

    def best(res: str) -> dict[str, Any] | None:
        cands = [r for r in half if r["resolution"] == res]
        return max(cands, key=lambda r: r["images_per_s"]) if cands else None

    targets = []
    for res, goal in (("512x512", 100.0), ("1024x576", 40.0)):
        r = best(res) if cuda else None
        entry = {"target": f"one-step images/s at {res}, fp16/bf16, GPU", "goal": f">= {goal:g}"}
        if r is None:
            entry.update(
                value=None,
                status=_NO_GPU
                if not cuda
                else f"not measured: run {res} with --options fp16 (or bf16)",
            )
        else:
            ok = r["images_per_s"] >= goal
            entry.update(
                value=r["images_per_s"],
                status="met" if ok else "not met",
                where=f"{r['option']}, batch {r['batch_size']}",
            )
        targets.append(entry)
    mem = [r for r in half if r["resolution"] == "512x512" and r["batch_size"] == 1]
    entry = {"target": "peak GPU memory at 512x512, batch 1, fp16/bf16 (GB)", "goal": "<= 4"}
    if not cuda or not mem:
        entry.update(value=None, status=_NO_GPU if not cuda else "not measured: run 512 fp16")
    else:
        low = min(mem, key=lambda r: r["peak_memory_gb"])
        entry.update(
            value=low["peak_memory_gb"],
            status="met" if low["peak_memory_gb"] <= 4 else "not met",
            where=low["option"],
        )
    targets.append(entry)
    if not cuda:
        effs = [
            r["efficiency"]
            for r in rows
            if r.get("efficiency") is not None and r["option"] == "plain"
        ]
        entry = {"target": "CPU achieved/ideal, every mode", "goal": ">= 0.9"}
        if not ratios_meaningful(results["model"]["unet_parameters"]):
            entry.update(value=None, status="not measured: small test components (use --size real)")
        elif effs:
            entry.update(value=min(effs), status="met" if min(effs) >= 0.9 else "not met")
        else:
            entry.update(value=None, status="not measured: no edit mode was run")
        targets.append(entry)
    return targets


def option_features(spec: str, device: torch.device) -> list:
    """The speed features of one ``--options`` entry: a preset (``safe``, ``fast``, ``max``:
    what it applies on ``device``, as ``edit --speed`` would) or features joined by '+'."""
    if spec in PRESETS:
        return resolve_speed(spec, device, flag="--options")[0]
    return parse_option(spec)


def run_benchmark(
    settings: BenchSettings, pipe: Any | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Run the suite; returns the results document (see :func:`write_results`).

    Args:
        settings: what to run (validated here).
        pipe: a pipeline to measure (default: built or loaded from ``settings``); it is
            moved to the settings' device and dtype, and options are undone afterwards.
        progress: a progress bar on stderr.
    """
    from tqdm.auto import tqdm

    from ..devices import resolve_device
    from ..environment import environment_report

    settings.validate()
    device = resolve_device(settings.device)
    dtype = getattr(torch, settings.dtype)
    started = time.perf_counter()
    pipe = build_pipeline(settings, device, dtype) if pipe is None else place(pipe, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    cases = available_cases()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_report(device),
        "versions": environment_report(),
        "settings": settings.as_dict(),
        "model": {
            "name": settings.model
            or ("tiny" if settings.size == "tiny" else "SD1.5-InstructPix2Pix (random weights)"),
            "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "attention_processor": type(next(iter(pipe.unet.attn_processors.values()))).__name__,
        },
        "components": [],
        "cases": [],
        "options": [],
    }
    configs = [("plain", [])] + [(spec, option_features(spec, device)) for spec in settings.options]
    grid = [(w, h, b) for (w, h) in settings.resolutions or [] for b in settings.batch_sizes]
    bar = tqdm(
        total=len(configs) * len(grid) * len(settings.modes),
        desc="bench",
        unit="case",
        disable=not progress,
        file=sys.stderr,
    )
    for label, options in configs:
        gpu_only = [o for o in options if o.gpu_only and device.type != "cuda"]
        entry = {"option": label, "options": [o.name for o in options]}
        if gpu_only:
            entry.update(status="skipped", reason=f"{gpu_only[0].name}: {gpu_only[0].reason}")
            results["options"].append(entry)
            for w, h, b in grid:
                for name in settings.modes:
                    results["cases"].append(
                        {
                            "case": name,
                            "option": label,
                            "resolution": f"{w}x{h}",
                            "batch_size": b,
                            "dtype": settings.dtype,
                            "status": "skipped",
                            "reason": entry["reason"],
                        }
                    )
            bar.update(len(grid) * len(settings.modes))
            continue
        entry.update(status="measured", reason="")
        results["options"].append(entry)
        with applied(pipe, options, settings):
            for w, h, b in grid:
                ctx = BenchContext(pipe, settings, device, w, h, b, label)
                base = {
                    "option": label,
                    "resolution": f"{w}x{h}",
                    "width": w,
                    "height": h,
                    "batch_size": b,
                    "dtype": settings.dtype,
                }
                if any(cases[m].needs_components for m in settings.modes):
                    bar.set_postfix_str(f"{label} {w}x{h} b{b} components")
                    ctx.components, detail = measure_components(ctx)
                    results["components"].append(
                        {**base, **dataclasses.asdict(ctx.components), "timings": detail}
                    )
                for name in settings.modes:
                    bar.set_postfix_str(f"{label} {w}x{h} b{b} {name}")
                    row = cases[name].run(ctx)
                    results["cases"].append({"case": name, **base, "status": "measured", **row})
                    bar.update(1)
    bar.close()
    _one_step_ratios(results["cases"])
    _option_speedups(results["cases"])
    withhold_small_model_ratios(results)
    results["targets"] = gpu_targets(results)
    results["total_s"] = time.perf_counter() - started
    return results
