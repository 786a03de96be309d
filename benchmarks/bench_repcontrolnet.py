"""RepControlNet's cost at real SD1.5 size: FLOPs counted and forward time measured.

Compares, per UNet pass, on the architectures built from config with random weights (speed
and FLOPs do not depend on the weights' values):

* ``base``: the SD1.5 UNet;
* ``controlnet+unet``: a ControlNet (copy of encoder + mid) plus the UNet (FPGA's
  ID-ControlNet path, paper Table 5: 0.91 T FLOPs vs 0.68 T);
* ``rep two-branch``: the training-time model (every conv/linear doubled);
* ``rep merged``: the merged UNet (Eq. 6) with its decoupled ID attention (4 ID tokens) and
  the adapter residual added at conv_in (the adapter runs once per image, reported apart).

FLOPs by ``torch.utils.flop_counter`` (a multiply-add counts 2) at 512x512 (latent 64x64);
times are the median of ``--repeats`` forwards at ``--resolution`` on this machine. Run under
``flock /tmp/realsize.lock`` (peaks near 8 GB).

    flock /tmp/realsize.lock python benchmarks/bench_repcontrolnet.py --resolution 256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed(fn, repeats: int) -> float:
    with torch.no_grad():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256, help="image side for timings")
    ap.add_argument("--flops-resolution", type=int, default=512, help="image side for FLOPs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--meta",
        action="store_true",
        help="count FLOPs only, on the meta device (no memory, no lock needed; no timings)",
    )
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "repcontrolnet_cpu.json")
    )
    args = ap.parse_args()

    from diffusers import ControlNetModel

    from instantportrait.cli.env import environment_report
    from instantportrait.components import build_components, count_parameters
    from instantportrait.models.rep_controlnet import RepControlNet, adapter_injection

    torch.manual_seed(0)
    if args.meta:
        from instantportrait.components import SD15_UNET_CONFIG, _unet

        torch.set_default_device("meta")
        unet = _unet(SD15_UNET_CONFIG).eval()
    else:
        unet = build_components("sd15", seed=0)["unet"].eval()

    def inputs(side: int, batch: int = 1):
        lat = side // 8
        return (
            torch.randn(batch, 4, lat, lat),
            torch.tensor([500] * batch),
            torch.randn(batch, 77, 768),
            torch.rand(batch, 3, side, side),
            torch.randn(batch, 4, 768),
        )

    results: dict[str, dict] = {}

    def measure(name: str, make_fn, params: int) -> None:
        f = flops(make_fn(args.flops_resolution))
        t = None if args.meta else timed(make_fn(args.resolution), args.repeats)
        results[name] = {
            "flops": f,
            "tflops": round(f / 1e12, 4),
            "seconds": None if t is None else round(t, 3),
            "params_m": round(params / 1e6, 1),
        }
        print(
            f"{name:18s} {f / 1e12:7.3f} TFLOPs  {t or float('nan'):7.3f} s  {params / 1e6:8.1f} M",
            flush=True,
        )

    def base_fn(side):
        x, t, txt, _, _ = inputs(side)
        return lambda: unet(x, t, txt)

    measure("base", base_fn, count_parameters(unet))

    held = {"controlnet": ControlNetModel.from_unet(unet).eval()}

    def cn_fn(side):
        x, t, txt, cond, _ = inputs(side)

        def run():
            down, mid = held["controlnet"](x, t, txt, controlnet_cond=cond, return_dict=False)
            return unet(x, t, txt, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid)  # fmt: skip

        return run

    measure("controlnet+unet", cn_fn, count_parameters(unet) + count_parameters(held["controlnet"]))
    held.clear()
    gc.collect()

    rep = RepControlNet(unet).eval()  # wraps `unet` in place: the base is not needed after

    def two_fn(side):
        x, t, txt, cond, ids = inputs(side)
        return lambda: rep(x, t, txt, cond, ids)

    measure("rep two-branch", two_fn, count_parameters(rep))
    merged = rep.merge(inplace=True)
    gc.collect()

    def merged_fn(side):
        x, t, txt, cond, ids = inputs(side)
        residual = rep.adapter(cond)  # once per image

        def run():
            with adapter_injection(merged, residual, rep.inject_at):
                return merged(x, t, txt, cross_attention_kwargs={"id_embeds": ids})

        return run

    extra = count_parameters(rep.adapter) + count_parameters(rep.id_projections)
    measure("rep merged", merged_fn, count_parameters(merged) + extra)
    adapter_flops = flops(lambda: rep.adapter(inputs(args.flops_resolution)[3]))
    r = results
    summary = {
        "merged_vs_base_flops": round(r["rep merged"]["flops"] / r["base"]["flops"], 4),
        "merged_vs_controlnet_flops": round(
            r["rep merged"]["flops"] / r["controlnet+unet"]["flops"], 4
        ),
        "flops_speedup_over_controlnet": round(
            r["controlnet+unet"]["flops"] / r["rep merged"]["flops"], 3
        ),
        "adapter_tflops_once_per_image": round(adapter_flops / 1e12, 4),
        "paper_table5_tflops": {"sd15": 0.68, "controlnet+sd15": 0.91, "repcontrolnet": 0.69},
    }
    if not args.meta:
        summary["speedup_over_controlnet"] = round(
            r["controlnet+unet"]["seconds"] / r["rep merged"]["seconds"], 3
        )
        summary["merged_vs_base_time"] = round(r["rep merged"]["seconds"] / r["base"]["seconds"], 3)
    print(json.dumps(summary, indent=2))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment_report(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timing_resolution": None if args.meta else args.resolution,
        "flops_resolution": args.flops_resolution,
        "torch_threads": torch.get_num_threads(),
        "results": results,
        "summary": summary,
    }
    out = Path(args.out)
    if args.meta and out.name == "repcontrolnet_cpu.json":
        out = out.with_name("repcontrolnet_flops.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
