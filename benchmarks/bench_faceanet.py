"""FaceA-Net cost: seconds per tuning step, projected time per person, peak memory, and the
generation latency split into context / detection / inpainting.

Everything runs the project's own code paths on architectures built from config with random
weights (speed does not depend on weight values):

* tuning: :class:`FaceANetTrainer` on SD-1.5-inpainting (``random-real``: 9-channel UNet,
  CLIP ViT-L/14, the SD VAE) with the LoRA (rank 48) and the [feat] vectors, batch 4, both
  tasks of eq. 2, optimizer step included; crops of the bundled astronaut portrait;
* generation: :class:`FaceANetPipeline` repainting the astronaut upscaled to 1024x1024 (the
  SDXL context size): face detection on the full image, the crop at the training scale, the
  inpainting steps with CFG on the 462-token T'_id; the context model (real-size SDXL) timed
  per step on its own at the same small resolution.

On this CPU a real-size step at 512 is slow; ``--resolution`` (default 256) sets the tuning
and inpainting resolution and the context size, and the per-person time is projected from
the measured step time to ``--person-steps`` (1000, the paper's). The projection to 512 in
the JSON (``x (512/res)^2``) assumes cost grows with pixels and is a lower bound (attention
grows faster). Wrap real-size runs in ``flock /tmp/realsize.lock``:

    flock /tmp/realsize.lock python benchmarks/bench_faceanet.py --resolution 256 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tuning(args, tmp: Path) -> tuple[dict, object]:
    from instantportrait.benchmark import PeakMemory, time_call
    from instantportrait.training.config import from_dict
    from instantportrait.training.faceanet import FaceANetConfig, FaceANetTrainer
    from instantportrait.training.loop import step_generator

    # one person (tuning refuses photos of different people); timing does not depend on it
    images = [str(ROOT / "examples" / "astronaut.png")] * 2
    cfg = from_dict(
        FaceANetConfig,
        {
            "model": {"base": args.size},
            "data": {
                "images": images,
                "gender": "woman",
                "resolution": args.resolution,
                # the GPU suite: no dlib recognition weights there (and one person here anyway)
                "allow_mixed_identities": getattr(args, "allow_mixed_identities", False),
            },
            "training": {"output_dir": str(tmp / "run"), "batch_size": 4, "tensorboard": False},
        },
    )
    trainer = FaceANetTrainer(cfg)
    start = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - start
    batch = trainer.collate([trainer.dataset[(0, i)] for i in range(4)])
    counter = iter(range(10_000))

    def step():
        trainer.training_step(batch, step_generator(0, next(counter), 0, trainer.device))

    with PeakMemory(trainer.device) as mem:
        timing = time_call(step, warmup=1, repeats=args.steps, device=trainer.device)
    unet = trainer.model.unet
    lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    per_step = timing.median
    out = {
        "setup_s (load, detect, crop, mask)": round(setup_s, 2),
        "step_s": timing.as_dict(),
        "step_s_median": round(per_step, 3),
        "person_steps": args.person_steps,
        "projected_person_s_at_res": round(per_step * args.person_steps + setup_s, 1),
        "projected_person_s_at_512_lower_bound": round(
            per_step * (512 / args.resolution) ** 2 * args.person_steps + setup_s, 1
        ),
        "style_preset_600_steps_s_at_res": round(per_step * 600 + setup_s, 1),
        "peak_memory_gb": round(mem.peak_gb, 2),
        "peak_memory_kind": mem.kind,
        "lora_parameters": lora,
        "feat_parameters": trainer.model.feats.vectors.numel(),
    }
    return out, trainer


def generation(args, trainer) -> dict:
    from PIL import Image

    from instantportrait.benchmark import PeakMemory

    pipe = trainer.pipeline()
    pipe.unet.eval()
    context = Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((1024, 1024))
    runs = []
    with PeakMemory(trainer.device) as mem:
        for seed in range(1 + args.steps):  # first: warm-up
            out = pipe(
                "a woman smiling",
                context_image=context,
                num_inference_steps=args.inpaint_steps,
                guidance_scale=7.5,
                generator=torch.Generator().manual_seed(seed),
            )
            runs.append(out.timings)
    runs = runs[1:]
    det = sorted(r["detection"] for r in runs)[len(runs) // 2]
    inp = sorted(r["inpainting"] for r in runs)[len(runs) // 2]
    per_inpaint_step = inp / args.inpaint_steps
    return {
        "detection_s (1024x1024, dlib HOG + 68 landmarks)": round(det, 3),
        f"inpainting_s ({args.inpaint_steps} steps, CFG, res {args.resolution})": round(inp, 3),
        "inpainting_s_per_step": round(per_inpaint_step, 3),
        "inpainting_projected_50_steps_s": round(per_inpaint_step * 50, 1),
        "peak_memory_gb": round(mem.peak_gb, 2),
    }


def context_model(args) -> dict:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from instantportrait.benchmark import PeakMemory, time_call
    from instantportrait.components import build_sdxl, clip_tokenizer

    parts = build_sdxl(seed=0)
    tok = clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        tokenizer=tok,
        tokenizer_2=tok,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        ),
        **parts,
    )
    pipe.set_progress_bar_config(disable=True)
    res = args.resolution

    def run(steps):
        return lambda: pipe(
            "a woman in a park, front face",
            num_inference_steps=steps,
            guidance_scale=5.0,
            height=res,
            width=res,
            generator=torch.Generator().manual_seed(0),
        )

    with PeakMemory("cpu") as mem:
        one = time_call(run(1), warmup=0, repeats=1).median
        two = time_call(run(2), warmup=0, repeats=1).median
    per_step = max(two - one, 1e-6)
    fixed = max(one - per_step, 0.0)
    return {
        f"context_s_1_step (SDXL, {res}x{res}, CFG)": round(one, 2),
        f"context_s_2_steps (SDXL, {res}x{res}, CFG)": round(two, 2),
        "context_s_per_step": round(per_step, 2),
        "context_fixed_s (text encoders, VAE decode)": round(fixed, 2),
        "context_projected_4_steps_s (distilled)": round(fixed + 4 * per_step, 1),
        "context_projected_30_steps_s": round(fixed + 30 * per_step, 1),
        "peak_memory_gb": round(mem.peak_gb, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="random-real", choices=["random-real", "tiny"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=2, help="timed tuning steps / generations")
    p.add_argument("--inpaint-steps", type=int, default=2)
    p.add_argument("--person-steps", type=int, default=1000)
    p.add_argument("--skip-context", action="store_true", help="do not build real-size SDXL")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faceanet_cpu.json"))
    args = p.parse_args()
    from instantportrait.cli.common import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    result = {
        "command": "python benchmarks/bench_faceanet.py " + " ".join(sys.argv[1:]),
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({platform.processor()})",
        "torch_threads": torch.get_num_threads(),
        "size": args.size,
        "resolution": args.resolution,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["tuning"], trainer = tuning(args, Path(tmp))
        print(json.dumps(result["tuning"], indent=1), flush=True)
        result["generation"] = generation(args, trainer)
        print(json.dumps(result["generation"], indent=1), flush=True)
    del trainer
    if not args.skip_context and args.size == "random-real":
        result["context"] = context_model(args)
        print(json.dumps(result["context"], indent=1), flush=True)
    if "context" in result:
        g, c = result["generation"], result["context"]
        total = (
            c["context_projected_4_steps_s (distilled)"]
            + g["detection_s (1024x1024, dlib HOG + 68 landmarks)"]
            + g["inpainting_projected_50_steps_s"]
        )
        result["generation_split_projected"] = {
            "context_4_steps": round(c["context_projected_4_steps_s (distilled)"] / total, 3),
            "detection": round(g["detection_s (1024x1024, dlib HOG + 68 landmarks)"] / total, 3),
            "inpainting_50_steps": round(g["inpainting_projected_50_steps_s"] / total, 3),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
