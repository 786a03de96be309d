"""RepControlNet's cost at real SD1.5 size: FLOPs counted and forward time measured.

Compares, per UNet pass, on the architectures built from config with random weights (speed
and FLOPs do not depend on the weights' values):

* ``base``: the SD1.5 UNet;
* ``controlnet+unet``: a ControlNet (copy of encoder + mid) plus the UNet (FPGA's
  ID-ControlNet path, paper Table 5: 0.91 T FLOPs vs 0.68 T);
* ``rep two-branch``: the training-time model (every conv/linear doubled; FLOPs only unless
  ``--time-two-branch``);
* ``rep merged``: the merged UNet (Eq. 6) with its decoupled ID attention (4 ID tokens) and
  the adapter residual added at conv_in (the adapter runs once per image, reported apart).

FLOPs by ``torch.utils.flop_counter`` (a multiply-add counts 2) at 512x512 (latent 64x64),
on the meta device (no memory). Times: the three inference models are held at once (about
9 GB) and timed **interleaved**, round after round (base, controlnet+unet, merged, ...), so a
change of machine load hits all three alike; each figure is the median over ``--repeats``
rounds, the spread (min-max) is reported. Run under ``flock /tmp/realsize.lock``; on a GPU
pass ``--device cuda`` (fp16 with ``--dtype float16``; CUDA is synchronised around each call).

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


def flops(fn) -> tuple[int, int]:
    """(all FLOPs, FLOPs of the layers with weights: convolutions and linear maps).

    On the meta device attention runs as explicit batched matmuls (``aten.bmm``), which the
    first figure counts; the paper's Table 5 (0.68 T for SD1.5 at 512²) matches the second.
    """
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    layers = sum(v for k, v in per_op.items() if k != "aten.bmm")
    return int(counter.get_total_flops()), layers


def count_flops(
    resolution: int,
) -> tuple[dict[str, tuple[int, int]], tuple[int, int], dict[str, int]]:
    """FLOPs per model and of the adapter, parameters per model (meta device: no memory)."""
    from diffusers import ControlNetModel

    from instantportrait.components import SD15_UNET_CONFIG, _unet, count_parameters
    from instantportrait.models.rep_controlnet import RepControlNet, adapter_injection

    with torch.device("meta"):
        unet = _unet(SD15_UNET_CONFIG).eval()
        x, t, txt, cond, ids = inputs(resolution, torch.device("meta"), torch.float32)
        cn = ControlNetModel.from_unet(unet).eval()
        out, params = {}, {}
        out["base"] = flops(lambda: unet(x, t, txt))
        params["base"] = count_parameters(unet)

        def cn_run():
            down, mid = cn(x, t, txt, controlnet_cond=cond, return_dict=False)
            unet(x, t, txt, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid)  # fmt: skip

        out["controlnet+unet"] = flops(cn_run)
        params["controlnet+unet"] = count_parameters(unet) + count_parameters(cn)
        rep = RepControlNet(unet).eval()
        out["rep two-branch"] = flops(lambda: rep(x, t, txt, cond, ids))
        params["rep two-branch"] = count_parameters(rep)
        adapter = flops(lambda: rep.adapter(cond))
        residual = torch.zeros(1, 320, resolution // 8, resolution // 8)
        merged = rep.merge(inplace=True)

        def merged_run():
            with adapter_injection(merged, residual, rep.inject_at):
                merged(x, t, txt, cross_attention_kwargs={"id_embeds": ids})

        out["rep merged"] = flops(merged_run)
        params["rep merged"] = (
            count_parameters(merged)
            + count_parameters(rep.adapter)
            + count_parameters(rep.id_projections)
        )
    return out, adapter, params


def inputs(
    side: int,
    device: torch.device,
    dtype: torch.dtype,
    batch: int = 1,
    text_dim: int = 768,
    id_dim: int = 768,
):
    g = torch.Generator().manual_seed(0)
    lat = side // 8

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return (
        rnd(batch, 4, lat, lat),
        torch.tensor([500] * batch, device=device),
        rnd(batch, 77, text_dim),
        torch.rand(batch, 3, side, side, generator=g).to(device, dtype),
        rnd(batch, 4, id_dim),
    )


def build_models(device: torch.device, dtype: torch.dtype, two_branch: bool, size: str = "sd15"):
    """Callables of one forward each: base, controlnet+unet, rep merged (and two-branch).

    ``size``: ``sd15`` (real size) or ``tiny`` (the test UNet: a smoke run)."""
    from diffusers import ControlNetModel

    from instantportrait.components import build_components
    from instantportrait.models.rep_controlnet import RepControlNet, adapter_injection

    base = build_components(size, seed=0, in_channels=4)["unet"].eval()
    cn = ControlNetModel.from_unet(base).eval()
    # the merged model from a second UNet (wrapped in place, then folded: no extra copy)
    rep = RepControlNet(build_components(size, seed=0, in_channels=4)["unet"]).eval()
    rep_two = None
    if two_branch:
        rep_two = rep.to(device, dtype)
    else:
        rep.merge(inplace=True)
    gc.collect()
    base.to(device, dtype)
    cn.to(device, dtype)
    rep.to(device, dtype)
    return base, cn, rep, rep_two, adapter_injection


def time_models(
    resolution: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    batch: int = 1,
    two_branch: bool = False,
    size: str = "sd15",
    verbose: bool = True,
) -> dict[str, dict[str, float]]:
    """Seconds per forward of base, controlnet+unet and the merged (or two-branch) model,
    interleaved round after round; median, min and max over ``repeats`` rounds."""
    base, cn, rep, rep_two, inject = build_models(device, dtype, two_branch, size)
    cfg = base.config
    x, t, txt, cond, ids = inputs(
        resolution, device, dtype, batch, cfg.cross_attention_dim, cfg.cross_attention_dim
    )
    with torch.no_grad():
        residual = rep.adapter(cond)  # once per image

    def run_base():
        base(x, t, txt)

    def run_cn():
        down, mid = cn(x, t, txt, controlnet_cond=cond, return_dict=False)
        base(x, t, txt, down_block_additional_residuals=down,
             mid_block_additional_residual=mid)  # fmt: skip

    def run_merged():
        with inject(rep.unet, residual, rep.inject_at):
            rep.unet(x, t, txt, cross_attention_kwargs={"id_embeds": ids})

    def run_two():
        rep_two(x, t, txt, cond, ids)

    runs = {"base": run_base, "controlnet+unet": run_cn}
    runs["rep two-branch" if rep_two is not None else "rep merged"] = (
        run_two if rep_two is not None else run_merged
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        sync()
        for r in range(repeats):
            for name, fn in runs.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
            if verbose:
                line = ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items())
                print(f"round {r + 1}/{repeats}: {line}", flush=True)
    return {
        name: {
            "seconds": round(statistics.median(ts), 4),
            "seconds_min": round(min(ts), 4),
            "seconds_max": round(max(ts), 4),
        }
        for name, ts in times.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256, help="image side for timings")
    ap.add_argument("--flops-resolution", type=int, default=512, help="image side for FLOPs")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--batch", type=int, default=1, help="latents per forward (CFG: 2)")
    ap.add_argument(
        "--time-two-branch",
        action="store_true",
        help="also time the training-time two-branch model (instead of the merged one's "
        "in-place fold; ~7 GB more)",
    )
    ap.add_argument(
        "--meta", action="store_true", help="count FLOPs only (no memory, no lock, no timings)"
    )
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = ap.parse_args()

    from instantportrait.cli.env import environment_report

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    counted, adapter_flops, params = count_flops(args.flops_resolution)
    results: dict[str, dict] = {
        name: {
            "flops": f,
            "tflops": round(f / 1e12, 4),
            "layer_tflops": round(lf / 1e12, 4),
            "params_m": round(params[name] / 1e6, 1),
        }
        for name, (f, lf) in counted.items()
    }
    if not args.meta:
        timed = time_models(
            args.resolution, args.repeats, device, dtype, args.batch, args.time_two_branch
        )
        for name, entry in timed.items():
            results[name].update(entry)
    for name, r in results.items():
        sec = r.get("seconds")
        timing = "" if sec is None else f"{sec:7.3f} s"
        print(f"{name:18s} {r['tflops']:7.3f} TFLOPs ({r['layer_tflops']:.3f} in layers)  "
              f"{timing}  {r['params_m']:8.1f} M")  # fmt: skip
    r = results
    summary = {
        "merged_vs_base_flops": round(r["rep merged"]["flops"] / r["base"]["flops"], 4),
        "layer_tflops_like_table5": {k: v["layer_tflops"] for k, v in r.items()},
        "merged_vs_controlnet_flops": round(
            r["rep merged"]["flops"] / r["controlnet+unet"]["flops"], 4
        ),
        "flops_speedup_over_controlnet": round(
            r["controlnet+unet"]["flops"] / r["rep merged"]["flops"], 3
        ),
        "adapter_tflops_once_per_image": round(adapter_flops[0] / 1e12, 4),
        "paper_table5_tflops": {"sd15": 0.68, "controlnet+sd15": 0.91, "repcontrolnet": 0.69},
    }
    if "seconds" in r["rep merged"]:
        m, cn_r, b = r["rep merged"], r["controlnet+unet"], r["base"]
        summary["speedup_over_controlnet"] = round(cn_r["seconds"] / m["seconds"], 3)
        summary["merged_vs_base_time"] = round(m["seconds"] / b["seconds"], 3)
        # the fastest round of each: the least disturbed by other work on a shared machine
        summary["speedup_over_controlnet_fastest"] = round(
            cn_r["seconds_min"] / m["seconds_min"], 3
        )
        summary["merged_vs_base_time_fastest"] = round(m["seconds_min"] / b["seconds_min"], 3)
    print(json.dumps(summary, indent=2))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment_report(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": str(device),
        "dtype": args.dtype,
        "timing_resolution": None if args.meta else args.resolution,
        "timing_batch": args.batch,
        "flops_resolution": args.flops_resolution,
        "torch_threads": torch.get_num_threads(),
        "results": results,
        "summary": summary,
    }
    default = "repcontrolnet_flops.json" if args.meta else f"repcontrolnet_{device.type}.json"
    out = Path(args.out or ROOT / "benchmarks" / "results" / default)
    from instantportrait.benchmark.report import write_results

    print(write_results(report, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
