"""``instantportrait evaluate``: score methods on a protocol; resumable; tables and plots."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import add_device_arguments


def register(sub: argparse._SubParsersAction) -> None:
    # the help lists what the registries hold, so it cannot lag behind them
    from ..evaluation.methods import METHOD_KINDS
    from ..evaluation.paper_tables import list_paper_tables
    from ..evaluation.protocols import list_protocols

    p = sub.add_parser(
        "evaluate",
        help="evaluate methods on a protocol (face similarity, CLIP-T, ...); resumable",
        description=(
            "Expand faces x prompts x seeds x methods, generate each output once, score it, "
            "and keep every row in OUT/results.sqlite; a restart computes only what is "
            "missing. Writes OUT/report.md, report.csv, pareto.png and contact_sheet.png."
        ),
    )
    p.add_argument(
        "--protocol",
        default="instantportrait",
        help=f"a shipped protocol ({', '.join(list_protocols())}) or a protocol .json file "
        "(default instantportrait)",
    )
    p.add_argument(
        "--faces",
        help="input subjects: a folder of portraits, a folder of identity folders (tuning "
        "photos, held-out photos in reference/), a subjects .json, or files, comma-separated",
    )
    p.add_argument(
        "--prompts", help="prompt file (.txt, '[split]' headers; or .json) replacing the protocol's"
    )
    p.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="a method, e.g. ipnet=edit:runs/ipnet/final,steps=1 (repeat for more); kinds: "
        f"{', '.join(METHOD_KINDS)} (docs/evaluation.md)",
    )
    p.add_argument(
        "--metrics",
        help="comma list of metrics, 'offline' or 'all' (default: the protocol's)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...|fastface",
        help="expand each method having setting KEY into one method per value (repeat: the "
        "product); 'fastface' = ip_adapter_scale 0.1,0.35,0.5,0.65,0.8,0.95 x lora_scale 1,0.5",
    )
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 per face and prompt (default: protocol)")
    p.add_argument("--out", help="output folder: store, outputs, report (required)")
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="where a metric model loads from (path or Hub id), e.g. clip-vit-h-14=DIR, "
        "lpips=DIR, arcface=w600k_r50.onnx; --list-metrics shows the keys",
    )
    from .detector_option import add_detector_arguments

    add_detector_arguments(p)
    p.add_argument("--reference", help="reference images for FID (default: the input faces)")
    p.add_argument("--max-faces", type=int, help="use only the first N faces")
    p.add_argument("--max-prompts", type=int, help="use only the first N prompts")
    p.add_argument("--retry-failed", action="store_true", help="recompute failed items")
    p.add_argument("--report-only", action="store_true", help="redraw the report of --out and exit")
    p.add_argument("--list-metrics", action="store_true", help="list metrics and models, exit")
    p.add_argument(
        "--paper-table",
        action="append",
        default=[],
        metavar="PAPER:TABLE",
        help="also write a paper's table with its published rows and this run's: "
        f"{', '.join(list_paper_tables())}",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved run and exit")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_device_arguments(p)
    p.set_defaults(func=run)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    from ..errors import InputError

    out: dict[str, str] = {}
    for v in values:
        key, eq, val = v.partition("=")
        if not eq or not key.strip() or not val.strip():
            raise InputError(f"{flag} {v!r}: expected KEY=VALUE")
        out[key.strip()] = val.strip()
    return out


def _list_metrics() -> int:
    from ..evaluation import metrics as M

    print("metrics (scope, models):")
    for name in M.ordered(list(M.METRICS)):
        m = M.METRICS[name]
        models = ", ".join(m.models) or "-"
        tag = "  [offline]" if m.offline else ""
        print(f"  {name:<18} {m.scope:<6} {models}{tag}")
        print(f"  {'':<18} {m.paper}")
    print("\nmodels (--weights KEY=PATH):")
    for key, src in M.MODELS.items():
        default = src.default or "(none: must be given)"
        print(f"  {key:<16} {src.description}; default {default}")
    return 0


def _faces(arg: str):
    from ..errors import InputError
    from ..evaluation.items import subjects_from_files

    parts = [s for s in arg.split(",") if s.strip()]
    if not parts:
        raise InputError("--faces: empty")
    return subjects_from_files(parts)


def _face_detector_weights(args: argparse.Namespace, weights: dict) -> dict:
    """``--detector``/``--detector-weights`` as the metric model ``face-detector``."""
    from ..errors import InputError
    from .detector_option import detector_config

    if args.detector is None and args.detector_weights is None:
        return weights
    if "face-detector" in weights:
        raise InputError("--detector: give the detector once (or --weights face-detector=...)")
    return weights | {"face-detector": detector_config(args).spec}


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if args.list_metrics:
        return _list_metrics()
    if not args.out:
        raise InputError("--out: the output folder is required")
    from ..writer import check_output_path

    # a resumable folder: an existing one is continued, but a file (or a path below one) is
    # refused here, before any model loads
    out = check_output_path(args.out, kind="dir")
    from ..evaluation.paper_tables import load_paper_table

    for name in args.paper_table:
        load_paper_table(name)  # an unknown table is refused before anything runs
    if args.report_only:
        from ..evaluation.report import write_report
        from ..evaluation.store import STORE_NAME

        if not (out / STORE_NAME).is_file():
            raise InputError(f"--out {out}: no {STORE_NAME} to report on")
        print(write_report(out))
        _paper_tables(args.paper_table, out)
        return 0

    from ..evaluation.methods import parse_method_arg
    from ..evaluation.metrics import resolve_metric_names
    from ..evaluation.protocols import load_protocol, read_prompts
    from ..evaluation.runner import EvaluationConfig, Evaluator, process_rank
    from ..io import list_images
    from .common import quiet_libraries, resolve_device, resolve_dtype

    protocol = load_protocol(args.protocol)
    if not args.faces:
        raise InputError(f"--faces: required ({protocol.faces or 'a folder of portraits'})")
    faces = _faces(args.faces)
    prompts = read_prompts(args.prompts) if args.prompts else protocol.prompts
    for flag, value in (("--max-faces", args.max_faces), ("--max-prompts", args.max_prompts)):
        if value is not None and value < 1:
            raise InputError(f"{flag}: must be at least 1, got {value}")
    if args.max_faces:
        faces = faces[: args.max_faces]
    if args.max_prompts:
        prompts = prompts[: args.max_prompts]
    if not args.method:
        raise InputError("--method: give at least one NAME=SPEC, e.g. ipnet=edit:DIR,steps=1")
    methods = {}
    for text in args.method:
        name, spec = parse_method_arg(text)
        if name in methods:
            raise InputError(f"--method: the name {name!r} is given twice")
        methods[name] = spec
    if args.sweep:
        from ..evaluation.sweeps import expand_sweeps, parse_sweep

        grid: dict = {}
        for text in args.sweep:
            for key, values in parse_sweep(text).items():
                if key in grid:
                    raise InputError(f"--sweep: {key} is swept twice")
                grid[key] = values
        methods = expand_sweeps(methods, grid)
    metrics = resolve_metric_names(args.metrics) if args.metrics else list(protocol.metrics)
    seeds = args.seeds if args.seeds is not None else protocol.seeds
    if seeds < 1:
        raise InputError(f"--seeds: must be at least 1, got {seeds}")
    import torch

    device = resolve_device(args.device)
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and device.type == "cuda" and device.index is None:
        # accelerate launch: a GPU per process (processes share GPUs when there are fewer)
        device = torch.device("cuda", int(local_rank) % max(1, torch.cuda.device_count()))
    dtype = resolve_dtype(args.dtype, device)
    references = list_images([args.reference]) if args.reference else None
    config = EvaluationConfig(
        faces=faces,
        prompts=prompts,
        methods=methods,
        metrics=metrics,
        seeds=list(range(seeds)),
        out=out,
        weights=_face_detector_weights(args, _pairs(args.weights, "--weights")),
        device=device,
        dtype=dtype,
        text_template=protocol.text_template,
        face_match=protocol.face_match,
        references=references,
        retry_failed=args.retry_failed,
        protocol=protocol.name,
        progress=not args.no_progress,
    )
    evaluator = Evaluator(config)  # validates every SPEC; loads nothing yet
    n_items = len(faces) * len(prompts) * seeds * len(methods)
    if args.dry_run:
        splits = list(dict.fromkeys(p.split for p in prompts))
        print(f"protocol   {protocol.name} ({protocol.source})")
        n_ids = sum(len(f.identities) for f in faces)
        print(f"subjects   {len(faces)} ({n_ids} identities; first {faces[0].input})")
        print(f"prompts    {len(prompts)} (splits: {', '.join(splits)})")
        print(f"seeds      {seeds}")
        for name, spec in methods.items():
            print(f"method     {name} = {spec.text}")
        print(f"metrics    {', '.join(metrics)}")
        print(f"items      {n_items}")
        print(f"out        {out}")
        return 0
    quiet_libraries()
    summary = evaluator.run()
    rank, world = process_rank()
    for name, reason in summary.unavailable.items() if rank == 0 else ():
        stand_in = ""
        if name.startswith("face_sim_") and "face_sim_dlib" in metrics and name != "face_sim_dlib":
            stand_in = " (face_sim_dlib, offline, stands in for it in the report's ID column)"
        print(f"unavailable: {name}: {reason}{stand_in}", file=sys.stderr)
    others = f", {summary.by_others} by another run" if summary.by_others else ""
    print(
        (f"rank {rank}/{world}: " if world > 1 else "")
        + f"{summary.items} items ({summary.already_done} already done, {summary.generated} "
        f"generated, {summary.failed_outputs} failed{others}) in {summary.seconds:.1f} s",
        file=sys.stderr,
    )
    if summary.report is not None:
        print(summary.report)
    _paper_tables(args.paper_table, out)
    return 0


def _paper_tables(names: list[str], out: Path) -> None:
    """Write and print each ``--paper-table`` (published rows + this run's)."""
    from ..evaluation.paper_tables import paper_table
    from ..writer import atomic_write

    for name in names:
        text = paper_table(out, name)
        path = out / f"paper-{name.replace(':', '-')}.md"
        atomic_write(path, lambda p, t=text: p.write_text(t, encoding="utf-8"))
        print(text)
