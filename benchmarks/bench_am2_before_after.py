"""AM2's IP branch before and after its optimisation, interleaved in one run (CPU).

The implementation before (``attention.py`` at commit 0d33c3a: ``torch.quantile``, ``amin`` +
``amax`` over three axes, ``torch.std``, query-major maps) is loaded from git next to the
current one. Per repeat, stock SDPA, the old and the new AM2 run (in alternating order) over
SDXL's 60 down/up IP layer shapes (batch 3, as ``bench_fastface.py --components``); their
paired differences give each one's added cost under the same machine load. The allocator is
warmed first as in a pipeline process (see ``warm_allocator``). Also reports the
largest difference between the two outputs.

    OMP_NUM_THREADS=2 python benchmarks/bench_am2_before_after.py --resolution 256 --repeats 30
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from instantportrait import attention

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "0d33c3a"
LAYERS = ((10, 10, 4096), (50, 20, 1024))  # SDXL's down/up IP layers: count, heads, queries


def old_module():
    text = subprocess.run(
        ["git", "show", f"{BEFORE}:src/instantportrait/attention.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "attention_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("attention_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def warm_allocator() -> None:
    """Free one 16 MiB block first, as a pipeline process has (the UNet's activations).

    glibc then serves later temporaries up to that size from its heap. Otherwise it maps each
    one of 128 KiB or more fresh from the kernel and unmaps it on free, so every call
    page-faults and small-op timings in a fresh process are inflated (2,706 faults per call at
    the 10-head, 256-query shape).
    """
    torch.empty(4 * 2**20).fill_(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    old = old_module()
    warm_allocator()
    g = torch.Generator().manual_seed(0)
    scale = (args.resolution / 1024) ** 2
    layers = []
    for count, heads, queries in LAYERS:
        qkv = [torch.randn(3, heads, n, 64, generator=g) for n in (int(queries * scale), 4, 4)]
        layers.append((count, *qkv))
    p_old, p_new = old.am_preset("am2"), attention.am_preset("am2")
    calls = {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "before": lambda q, k, v: old.manipulated_ip_attention(q, k, v, p_old, "down", 1),
        "after": lambda q, k, v: attention.manipulated_ip_attention(q, k, v, p_new, "down", 1),
    }
    diff = max(
        (calls["before"](q, k, v) - calls["after"](q, k, v)).abs().max().item()
        for _, q, k, v in layers
    )
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for r in range(args.repeats + 1):
            order = ["sdpa", "before", "after"] if r % 2 else ["after", "before", "sdpa"]
            for name in order:  # alternated, so neither side always follows the other
                call = calls[name]
                total = 0.0
                for count, q, k, v in layers:
                    start = time.perf_counter()
                    call(q, k, v)
                    total += count * (time.perf_counter() - start)
                if r:  # the first round warms up
                    times[name].append(total)
    result = {
        "command": " ".join(
            [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] * ("OMP_NUM_THREADS" in os.environ)
            + ["python", *sys.argv]
        ),
        "threads": torch.get_num_threads(),
        "resolution": args.resolution,
        "repeats": args.repeats,
        "max_abs_difference_before_after": diff,
    }
    for name in ("before", "after"):
        extra = [a - b for a, b in zip(times[name], times["sdpa"])]
        q1, med, q3 = statistics.quantiles(extra, n=4, method="inclusive")
        result[f"am2_{name}_extra_s"] = {
            "median": round(med, 5),
            "q1": round(q1, 5),
            "q3": round(q3, 5),
            "min": round(min(extra), 5),
        }
    result["sdpa_s_median"] = round(statistics.median(times["sdpa"]), 5)
    paired = [(a - s) / (b - s) for a, b, s in zip(times["before"], times["after"], times["sdpa"])]
    result["extra_before_over_after_median"] = round(statistics.median(paired), 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
