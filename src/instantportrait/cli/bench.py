"""``instantportrait bench``: speed and memory of the edit pipeline, as a table and JSON."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench options (shared with ``benchmarks/bench_edit.py``)."""
    p.add_argument(
        "--size",
        choices=("tiny", "real"),
        default="tiny",
        help="tiny components, or real SD1.5-InstructPix2Pix size with random weights "
        "(default tiny)",
    )
    p.add_argument("--model", help="measure this pipeline folder or Hub id instead of --size")
    p.add_argument(
        "--quick",
        action="store_true",
        help="one small resolution (tiny 64, real 128) and, at real size, multi-step modes "
        "capped at 4 steps (the rest extrapolated)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=None,
        help="cases to run (default: ipnet style_boost idenet ip2p magicbrush); --list shows all",
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1], help="default 1")
    p.add_argument(
        "--resolutions",
        nargs="+",
        default=None,
        help="WIDTHxHEIGHT or one side (default 512x512 1024x576; --quick: one small size)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls per figure (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="run multi-step modes with at most this many steps and extrapolate the rest",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="precision of the plain run (default float32; fp16/bf16 are also --options)",
    )
    p.add_argument(
        "--options",
        nargs="+",
        default=[],
        help="speed options or presets (none, safe, fast, max: as `edit --speed`), each "
        "measured against the plain run; join options with '+' to combine "
        "(e.g. fp16 fp16+channels-last+cuda-graphs safe); --list shows all",
    )
    p.add_argument(
        "--speed",
        nargs="+",
        default=[],
        metavar="PRESET",
        help="speed presets to measure against the plain run (as `edit --speed`: none, safe, "
        "fast, max); the same as listing them in --options",
    )
    p.add_argument("--tiny-vae", help="AutoencoderTiny (TAESD) folder for the tiny-vae option")
    p.add_argument("--prompt", default=None, help="the instruction edited")
    p.add_argument("--out", default="bench.json", help="JSON results file (default bench.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--list", action="store_true", help="list the cases and options, then exit")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings and exit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the edit pipeline (latency, images/s, memory, ideal ratios)",
        description="Time the edit pipeline end to end in the modes people compare, with the "
        "component split, peak memory, and achieved/ideal ratios; print a table, write JSON.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """The validated :class:`~instantportrait.benchmark.BenchSettings` of the arguments."""
    from ..benchmark import DEFAULT_PROMPT, EDIT_MODES, BenchSettings, parse_resolution
    from ..io import check_prompt

    return BenchSettings(
        size=args.size,
        model=args.model,
        quick=args.quick,
        modes=list(args.modes or EDIT_MODES),
        batch_sizes=list(args.batch_sizes),
        resolutions=[parse_resolution(r) for r in args.resolutions] if args.resolutions else None,
        repeats=args.repeats,
        warmup=args.warmup,
        max_steps=args.max_steps,
        device=args.device,
        dtype=args.dtype,
        options=list(args.options) + list(getattr(args, "speed", [])),
        tiny_vae=args.tiny_vae,
        prompt=check_prompt(args.prompt, name="--prompt") if args.prompt else DEFAULT_PROMPT,
    ).validate()


def run(args: argparse.Namespace) -> int:
    from .. import benchmark
    from .common import quiet_libraries

    if args.list:
        print("cases:")
        for name, case in benchmark.available_cases().items():
            print(f"  {name:<26} {case.description}")
        print("options (join with '+'):")
        for name, option in benchmark.OPTIONS.items():
            gpu = "  [GPU only]" if option.gpu_only else ""
            print(f"  {name:<26} {option.description}{gpu}")
        from ..speed import PRESETS

        print("presets (as `edit --speed`; half precision and CUDA-only parts on CUDA only):")
        for name, features in PRESETS.items():
            print(f"  {name:<26} {' + '.join(features) or '(nothing)'}")
        return 0
    settings = settings_from_args(args)
    if args.dry_run:
        print(json.dumps(settings.as_dict(), indent=2))
        return 0
    from ..devices import resolve_device
    from ..writer import prepare_output

    resolve_device(args.device)
    # The writer policy: an existing results file is not replaced without --overwrite.
    prepare_output(args.out, kind="file", overwrite=getattr(args, "overwrite", False))
    quiet_libraries()
    results = benchmark.run_benchmark(settings, progress=True)
    print(benchmark.format_tables(results))
    path = benchmark.write_results(results, args.out)
    print(f"\nwrote {path}")
    return 0
