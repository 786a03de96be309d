"""FaceA-Net tuning memory at SD-1.5-inpainting size, batch 4: measured, and projected to 512².

Each (mode, resolution) runs in its own process (a peak is a per-process figure): the real
SD-1.5-inpainting architecture with random weights (``random-real``: 9-channel UNet, CLIP
ViT-L/14, the SD VAE), the LoRA (rank 48) and the ``[feat]`` vectors, both tasks of eq. 2,
one warm-up step (AdamW allocates its state) and one measured step, optimizer included.

Modes: ``joint`` (one backward of L_A: both tasks' graphs alive together), ``per_task`` (one
backward per task, the default), ``per_task+ckpt`` (plus gradient checkpointing), and on a
GPU ``per_task+ckpt+bf16``.

* **CPU** (``--device cpu``): peak RSS of the measured step (reset at its start), fitted as
  ``a + b x pixels`` over two small resolutions and projected to 512² (:func:`project`).
  Keep RSS under 8 GB here: 128² at batch 4 peaks near 6 GB. Wrap it in the real-size lock:

      flock /tmp/realsize.lock python benchmarks/bench_faceanet_memory.py --resolutions 64 128

* **GPU** (``--device cuda``): CUDA peak allocated at 512² directly, no projection:

      python benchmarks/bench_faceanet_memory.py --device cuda --resolutions 512 \\
          --modes joint per_task per_task+ckpt per_task+ckpt+bf16

Writes ``--out`` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
MODES = ("joint", "per_task", "per_task+ckpt", "per_task+ckpt+bf16")
GB = 1024**3


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_one(mode: str, resolution: int, device: str) -> dict:
    """One process: set up the trainer, warm up one step, measure the next."""
    import torch

    from instantportrait.benchmark import PeakMemory
    from instantportrait.training.config import from_dict
    from instantportrait.training.faceanet import FaceANetConfig, FaceANetTrainer
    from instantportrait.training.loop import step_generator

    torch.set_num_threads(1)
    image = str(ROOT / "examples" / "astronaut.png")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = from_dict(
            FaceANetConfig,
            {
                "model": {"base": "random-real"},
                "data": {"images": [image, image], "gender": "woman", "resolution": resolution},
                "tuning": {"backward_per_task": mode != "joint"},
                "training": {
                    "output_dir": str(Path(tmp) / "run"),
                    "batch_size": 4,
                    "tensorboard": False,
                    "gradient_checkpointing": "ckpt" in mode,
                    "mixed_precision": "bf16" if "bf16" in mode else "no",
                },
            },
        )
        trainer = FaceANetTrainer(cfg)
        trainer.setup()
        batch = trainer.collate([trainer.dataset[(0, i)] for i in range(4)])
        acc = trainer.accelerator
        with acc.autocast():
            trainer.training_step(batch, step_generator(0, 0, 0, trainer.device))  # AdamW state
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
        else:
            before = current_rss_bytes()
        with PeakMemory(trainer.device) as mem, acc.autocast():
            trainer.training_step(batch, step_generator(0, 1, 0, trainer.device))
        unet = trainer.model.unet
        count = {
            "unet_base": sum(p.numel() for n, p in unet.named_parameters() if "lora_" not in n),
            "lora": sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n),
            "feat": trainer.model.feats.vectors.numel(),
            "vae": sum(p.numel() for p in trainer.vae.parameters()),
            "text_encoder": sum(p.numel() for p in trainer.text_encoder.parameters()),
        }
    return {
        "mode": mode,
        "resolution": resolution,
        "device": str(trainer.device),
        "resident_before_step_gb": round(before / GB, 3),
        "step_peak_gb": round(mem.peak_gb, 3),
        "step_added_gb": round((mem.peak_bytes - before) / GB, 3),
        "peak_kind": mem.kind,
        "parameters": count,
    }


def project(rows: list[dict], target: int = 512) -> dict:
    """The step's peak fitted per mode as ``a + b x pixels`` over the smallest and largest
    measured resolution, evaluated at ``target``².

    The absolute peak is fitted, not "peak minus RSS before the step": the allocator keeps
    the warm-up step's freed memory resident, so that difference is not the step's own.
    Linear in pixels assumes attention without a materialised score matrix (PyTorch's SDPA
    kernels on CPU and on CUDA); the weights, AdamW state and runtime are in ``a``.
    """
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        pts = sorted((r["resolution"] ** 2, r["step_peak_gb"]) for r in rows if r["mode"] == mode)
        if len(pts) < 2 or pts[0][0] == pts[-1][0]:
            continue
        (x0, y0), (x1, y1) = pts[0], pts[-1]
        b = (y1 - y0) / (x1 - x0)
        peak = y0 + b * (target**2 - x0)
        out[mode] = {
            "gb_per_megapixel": round(b * 1e6, 2),
            "projected_peak_gb_at_512": round(peak, 1),
            "fits_24gb_card": bool(peak < 24 * 0.95),
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--modes", nargs="+", default=list(MODES[:3]), choices=list(MODES))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faceanet_memory.json"))
    p.add_argument("--one", nargs=2, metavar=("MODE", "RES"), help=argparse.SUPPRESS)
    p.add_argument("--project", metavar="JSON", help="only redo the projection of a result file")
    args = p.parse_args()
    if args.project:
        result = json.loads(Path(args.project).read_text())
        result["projection_to_512"] = project(result["rows"])
        Path(args.project).write_text(json.dumps(result, indent=2))
        print(json.dumps(result["projection_to_512"], indent=2))
        return 0
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.device)))
        return 0
    rows = []
    for res in args.resolutions:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--device", args.device, "--one", mode, str(res)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{mode:>20} {res:>4}²: resident {row['resident_before_step_gb']:.2f} GB, "
                f"step peak {row['step_peak_gb']:.2f} GB (+{row['step_added_gb']:.2f})",
                flush=True,
            )
    result = {"command": " ".join(sys.argv), "batch_size": 4, "rows": rows}
    if args.device == "cpu":
        result["projection_to_512"] = project(rows)
        for mode, pr in result["projection_to_512"].items():
            print(f"{mode:>20} 512² projected: {pr['projected_peak_gb_at_512']:.1f} GB", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
