"""Speed and memory of the edit pipeline at real size: the `instantportrait bench` suite.

The same library and options as ``instantportrait bench`` (``--help`` lists them), with
real-size defaults: SD1.5-InstructPix2Pix built from its config with random weights (speed
does not depend on weight values), results in ``benchmarks/results/edit_{cpu,cuda}.json``.

    # CPU, minutes: 128x128, multi-step modes run 4 steps and extrapolated
    python benchmarks/bench_edit.py --quick
    # GPU: the paper's resolutions, batch sizes, and the speed options against the plain run
    python benchmarks/bench_edit.py --batch-sizes 1 4 16 \\
        --options fp16 fp16+channels-last fp16+channels-last+tiny-vae+cuda-graphs \\
        fp16+channels-last+compile-max-autotune
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from instantportrait.cli import bench
    from instantportrait.errors import InstantPortraitError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench.add_arguments(parser)
    parser.set_defaults(size="real", out=None)
    args = parser.parse_args(argv)
    if args.out is None:
        from instantportrait.devices import resolve_device

        kind = "cuda" if resolve_device(args.device).type == "cuda" else "cpu"
        args.out = str(ROOT / "benchmarks" / "results" / f"edit_{kind}.json")
    try:
        return bench.run(args)
    except InstantPortraitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
