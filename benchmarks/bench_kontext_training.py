"""Training-step time of IDE-Net and of each IPNet stage, for the InstructPix2Pix UNet and the
FLUX.1 Kontext backbones, at tiny size on the CPU.

Each step (forward + backward of every term, the discriminator's step included for IPNet;
optimizer updates left out, as in ``bench_training.py``) is set against its backbone's own
component: one teacher forward at the same size. The ideal is the number of denoiser calls the
step cannot avoid, a backward counted as two forwards:

* IDE-Net: forward + backward = 3;
* IPNet: the student's forward + backward (3) and the teacher's target call (1), plus, for
  the rows with sigma' <= tau, the inversion: 4 Euler calls on Kontext, 1 (eq. 9) on the UNet.

``achieved / ideal`` above 1 is what the rest costs (VAE encode/decode with gradients, the
identity embedder, DINOv2 and the discriminator) at this size; tiny denoisers are cheap, so
the ratio is large here and shrinks at real size, where the denoiser dominates.

    python benchmarks/bench_kontext_training.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_training import ipnet_step, make_dataset, timed  # noqa: E402

STAGE_NAMES = ("high", "middle", "low")


def _run_settings(out: Path) -> dict:
    return {
        "output_dir": str(out),
        "batch_size": 1,
        "tensorboard": False,
        "num_workers": 0,
        "mixed_precision": "no",
    }


def _data(data: Path, res: int) -> dict:
    return {"path": str(data), "resolution": res, "detect_faces": False}


def kontext_idenet(base: Path, data: Path, res: int, out: Path, warmup: int, repeats: int):
    from instantportrait.training.config import from_dict
    from instantportrait.training.idenet import IDENetConfig
    from instantportrait.training.kontext_idenet import KontextIDENetTrainer
    from instantportrait.training.loop import step_generator

    cfg = from_dict(
        IDENetConfig,
        {
            "model": {"backbone": "kontext", "pretrained": str(base), "lora_rank": 4},
            "data": {**_data(data, res), "dropout_image": 0.0, "dropout_both": 0.0},
            "loss": {"lambda_aid": 0.7, "embedder": "dlib"},
            "training": _run_settings(out / "kontext-idenet"),
        },
    )
    trainer = KontextIDENetTrainer(cfg)
    trainer.setup()
    batch = trainer.collate([trainer.dataset[(0, 0)]])
    _, _, lat, cond = trainer.encode_pair(batch, cfg.model.max_sequence_length)
    noise, half = torch.randn_like(lat), torch.full((1,), 0.5)

    def teacher_forward():
        with torch.no_grad():
            trainer.backbone.predict(noise, half, cond, lat)

    def step():
        trainer.model.zero_grad(set_to_none=True)
        trainer.compute_loss(batch, step_generator(0, 0, 0, trainer.device))["loss"].backward()

    fwd = timed(teacher_forward, warmup, repeats)
    return {"teacher_forward_s": fwd, "idenet_step_s": timed(step, warmup, repeats)}, trainer


def kontext_ipnet(teacher: Path, data: Path, res: int, out: Path, warmup: int, repeats: int):
    from instantportrait.training.config import from_dict
    from instantportrait.training.ipnet import STAGES, IPNetConfig, StageConfig
    from instantportrait.training.kontext_ipnet import KontextIPNetTrainer

    cfg = from_dict(
        IPNetConfig,
        {
            "teacher": {"path": str(teacher)},
            "stage": dict(STAGES["low"]["stage"]),
            "discriminator": {"backbone": "tiny"},
            "triplet": {"dino": "tiny"},
            "data": _data(data, res),
            "training": _run_settings(out / "kontext-ipnet"),
        },
    )
    trainer = KontextIPNetTrainer(cfg)
    trainer.setup()
    results = {}
    for name in STAGE_NAMES:
        trainer.cfg.stage = StageConfig(**{**STAGES["low"]["stage"], **STAGES[name]["stage"]})
        results[f"{name}_step_s"] = timed(_ipnet_step(trainer), warmup, repeats)
    return results


def _ipnet_step(trainer):
    return ipnet_step(trainer, trainer.collate([trainer.dataset[(0, 0)]]))


def ideal_calls(backbone: str) -> dict[str, float]:
    """Denoiser-call equivalents of each step (see the module's docstring); the low stage's
    sigma' range [0.15, 0.2] lies below tau, so all its rows invert."""
    inversion = 4 if backbone == "kontext" else 1
    return {"idenet": 3.0, "high": 4.0, "middle": 4.0, "low": 4.0 + inversion}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "kontext_training_cpu.json")
    )
    args = parser.parse_args()
    from bench_training import bench_idenet, bench_ipnet
    from instantportrait.backbones.kontext_components import write_tiny_kontext
    from instantportrait.environment import environment_report

    res, warmup, repeats = 64, 1, args.repeats
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment_report(),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "resolution": res,
        "batch": 1,
        "repeats": repeats,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", res)
        ide = bench_idenet("tiny", data, res, tmp, warmup, repeats, full_decode=False)
        ip = bench_ipnet("tiny", data, res, tmp, warmup, repeats)
        report["results"]["instructpix2pix"] = {
            "teacher_forward_s": ip["teacher_forward_s"],
            "idenet_step_s": ide["step_s_lambda_0.7"],
            **{f"{s}_step_s": ip[f"{s}_step_s"] for s in STAGE_NAMES},
        }
        base = tmp / "kontext"
        write_tiny_kontext(base)
        k_ide, trainer = kontext_idenet(base, data, res, tmp, warmup, repeats)
        teacher = tmp / "kontext-teacher"
        trainer.export(teacher)
        k_ip = kontext_ipnet(teacher, data, res, tmp, warmup, repeats)
        report["results"]["kontext"] = {**k_ide, **k_ip}
    print(
        f"tiny size, {res}x{res}, batch 1, CPU ({torch.get_num_threads()} threads), median of "
        f"{repeats}; ratio = step / one teacher forward; ideal = denoiser calls"
    )
    print(f"{'backbone':<16} {'step':<8} {'seconds':>8} {'ratio':>7} {'ideal':>6} {'ach/ideal':>9}")
    for backbone, r in report["results"].items():
        ideal = ideal_calls(backbone)
        for step in ("idenet", *STAGE_NAMES):
            seconds = r[f"{step}_step_s"]
            ratio = seconds / r["teacher_forward_s"]
            r[f"{step}_ratio_to_teacher_forward"] = ratio
            r[f"{step}_ideal_calls"] = ideal[step]
            r[f"{step}_achieved_over_ideal"] = ratio / ideal[step]
            print(
                f"{backbone:<16} {step:<8} {seconds:8.3f} {ratio:7.1f} {ideal[step]:6.0f} "
                f"{ratio / ideal[step]:9.1f}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
