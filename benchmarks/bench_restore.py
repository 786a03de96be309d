"""DIIR latency at real SD1.5 size: per face, and for 1/4/8 faces restored in one batch.

The DIIR pipeline (SD1.5 UNet, a full-size landmark ControlNet, the SD VAE and CLIP-L text
encoder, built from config with random weights: speed does not depend on the weights' values)
restores ``n`` face crops of one image in one batch: the DDIM inversion (CFG 1) caching every
``attn1`` output, then the regeneration with CFG 5 and the fusion of self-attention features and
latents. The paper reports near-constant latency in the number of faces on a GPU; on a CPU
the work grows with the batch, and the per-face time is what batching saves.

CPU settings: crops of ``--resolution`` (default 128; the paper's 512 costs ~16x more) and
``--steps`` DDIM steps (default 2; the paper's 30 scale linearly). Run under
``flock /tmp/realsize.lock`` (about 7 GB).

    flock /tmp/realsize.lock python benchmarks/bench_restore.py --resolution 128 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(
    resolution: int,
    steps: int,
    guidance_scale: float,
    faces: list[int],
    repeats: int,
    size: str = "sd15",
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    verbose: bool = True,
) -> tuple[dict, dict]:
    """DIIR restoring ``n`` faces of one image in one batch, for each ``n`` in ``faces``:
    (per-``n`` seconds and seconds per face, summary ratios). ``size``: ``sd15`` or ``tiny``."""
    device = device or torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    from diffusers import ControlNetModel, DDIMScheduler
    from PIL import Image

    from instantportrait.components import SD15_SCHEDULER_CONFIG, build_components
    from instantportrait.conditions import render_landmarks
    from instantportrait.faces.detect import detect
    from instantportrait.faces.masks import face_mask
    from instantportrait.pipelines.restore import DIIRPipeline
    from instantportrait.restoration.paste import crop_face, face_crop_box

    parts = build_components(size, seed=0, in_channels=4)
    controlnet = ControlNetModel.from_unet(parts["unet"]).eval()
    scheduler = DDIMScheduler(
        **SD15_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipe = DIIRPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        controlnet=controlnet,
        scheduler=scheduler,
        resolution=resolution,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device=device, dtype=dtype)

    # a real face: the astronaut at 256 px (face ~45 px), its crop, landmarks and mask
    res = resolution
    small = Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256))
    t0 = time.perf_counter()
    found = detect(small, landmarks=68)
    detect_s = time.perf_counter() - t0
    crop = face_crop_box(found.boxes[0])
    lm = crop.to_crop(found.landmarks68[0].numpy(), res)
    face = crop_face(small, crop, res)
    cond = render_landmarks(lm, (res, res))
    mask = face_mask(lm, (res, res), feather=0.02 * res)

    results = {}
    for n in faces:
        call = dict(num_inference_steps=steps, guidance_scale=guidance_scale)
        times = []
        for _ in range(repeats + 1):  # the first run warms up
            sync()
            t0 = time.perf_counter()
            pipe("a photo of a face", [face] * n, [cond] * n, mask.repeat(n, 1, 1, 1), **call)
            sync()
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times[1:])
        results[str(n)] = {"seconds": round(sec, 3), "seconds_per_face": round(sec / n, 3)}
        if verbose:
            print(f"{n} face(s): {sec:.2f} s, {sec / n:.2f} s per face", flush=True)
    one = results[str(faces[0])]["seconds"]
    summary = {f"{n}_faces_vs_1": round(results[str(n)]["seconds"] / one, 3) for n in faces[1:]}
    summary["detect_landmarks_seconds"] = round(detect_s, 3)
    unet_calls = steps * (1 + (2 if guidance_scale > 1 else 1))
    summary["unet_controlnet_passes_per_batch"] = unet_calls
    return results, summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--guidance-scale", type=float, default=5.0)
    ap.add_argument("--faces", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "restore_cpu.json"))
    args = ap.parse_args()

    results, summary = measure(args.resolution, args.steps, args.guidance_scale, args.faces,
                               args.repeats)  # fmt: skip
    print(json.dumps(summary, indent=2))
    from instantportrait.cli.env import environment_report

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment_report(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "resolution": args.resolution,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "torch_threads": torch.get_num_threads(),
        "results": results,
        "summary": summary,
    }
    out = Path(args.out)
    from instantportrait.benchmark.report import write_results

    print(write_results(report, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
