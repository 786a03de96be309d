"""Host overhead of the one-step edit call: the time outside its four components.

The tiny pipeline, on the CPU, edits one 64x64 PIL image by one prompt in one step (no
guidance: the IPNet call), PIL in and PIL out, many times. Forward hooks time the four
components (text encoder, VAE encoder, UNet, VAE decoder); the host overhead of a call is its
wall time minus theirs: input checks, resizing, tokenisation, noise, the x0 formula, the
conversions to and from PIL. The median over the calls is reported (and the 10th/90th
percentiles), with the machine's load average, since a busy machine inflates every figure.

    PYTHONPATH=src python benchmarks/bench_host_overhead.py [--calls 300] [--out FILE]

Runs against any checkout (it only uses the pipeline's public call), so the same script
measures before and after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """Wall time spent inside some modules (outermost calls only)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.total = 0.0
        self.depth = 0
        self.start = 0.0
        for module in modules.values():
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._exit)

    def _enter(self, *_):
        if self.depth == 0:
            self.start = time.perf_counter()
        self.depth += 1

    def _exit(self, *_):
        self.depth -= 1
        if self.depth == 0:
            self.total += time.perf_counter() - self.start


def measure(calls: int, warmup: int, resolution: int) -> dict:
    from PIL import Image

    from instantportrait.components import build_components
    from instantportrait.pipelines import InstantPortraitPipeline

    torch.set_num_threads(1)
    pipe = InstantPortraitPipeline(**build_components("tiny", seed=0))
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8))
    clock = Clock(
        {
            "text_encode": pipe.text_encoder,
            "vae_encode": pipe.vae.encoder,
            "unet": pipe.unet,
            "vae_decode": pipe.vae.decoder,
        }
    )
    generator = torch.Generator().manual_seed(0)
    totals, host = [], []
    for i in range(warmup + calls):
        clock.total = 0.0
        t0 = time.perf_counter()
        pipe(
            "wearing a hat",
            image,
            num_inference_steps=1,
            guidance_scale=1.0,
            image_guidance_scale=1.0,
            generator=generator,
            resolution=resolution,
        )
        dt = time.perf_counter() - t0
        if i >= warmup:
            totals.append(dt)
            host.append(dt - clock.total)
    q = statistics.quantiles(host, n=10)
    return {
        "calls": calls,
        "resolution": resolution,
        "call_ms_median": 1e3 * statistics.median(totals),
        "host_overhead_ms_median": 1e3 * statistics.median(host),
        "host_overhead_ms_p10": 1e3 * q[0],
        "host_overhead_ms_p90": 1e3 * q[-1],
        "components_ms_median": 1e3 * statistics.median(t - h for t, h in zip(totals, host)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--label", default="", help="a name for this run (e.g. before/after)")
    parser.add_argument("--out", default=None, help="JSON file (default: print only)")
    args = parser.parse_args(argv)
    result = measure(args.calls, args.warmup, args.resolution)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result.update(
        label=args.label,
        commit=commit,
        load_average=os.getloadavg(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        python=sys.version.split()[0],
        goal_ms=1.0,
    )
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
