"""Scoring throughput of the offline evaluation metrics on CPU (items per second).

Scores outputs made from the two bundled portraits (mirror, small rotation, brighter, and a
face-free grey image, so FFC's no-face path with its upsampling retries is included) against
their inputs with the metrics that need no user-provided weights: ``face_sim_dlib`` (dlib HOG
detection + landmarks + the PyTorch port of dlib's ResNet) and ``ffc`` (sharing the
detection). Reports warm scoring throughput (models loaded, each input's face computed once,
as in a run), the same per metric, and the whole runner (identity method: PNG write, SQLite
rows, report excluded), and two runs sharing one output folder (two processes; they claim
items in the store and split the work). Writes
``benchmarks/results/evaluation_cpu.json``.

    python benchmarks/bench_evaluation.py [--items 48] [--size 512] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "evaluation_cpu.json"


def _variants(img: Image.Image) -> tuple[list[Image.Image], Image.Image]:
    """Three outputs showing the input's face, and one face-free output."""
    faces = [
        ImageOps.mirror(img),
        img.rotate(5, resample=Image.BILINEAR),
        ImageEnhance.Brightness(img).enhance(1.2),
    ]
    return faces, Image.new("RGB", img.size, (128, 128, 128))


def _score(hub, metric_names, pairs) -> tuple[float, dict[str, int]]:
    from instantportrait.evaluation.metrics import METRICS, ItemContext

    status = {"ok": 0, "failed": 0}
    start = time.perf_counter()
    for key, inp, out in pairs:
        ctx = ItemContext(inp, out, "wearing a hat", hub, input_key=key)
        for name in metric_names:
            try:
                METRICS[name].fn(ctx)
                status["ok"] += 1
            except Exception:  # noqa: BLE001 - a face-free output fails face similarity
                status["failed"] += 1
    return time.perf_counter() - start, status


def _one_run(faces: list[str], n_prompts: int, out: str, threads: int | None):
    """One ``evaluate`` of the identity method (a worker process of the concurrent case)."""
    if threads:
        torch.set_num_threads(threads)
    from instantportrait.evaluation.protocols import Prompt
    from instantportrait.evaluation.runner import EvaluationConfig, Evaluator

    cfg = EvaluationConfig(
        faces=[Path(f) for f in faces],
        prompts=[Prompt(f"prompt {i}", "all", i) for i in range(n_prompts)],
        methods={"identity": "identity"},
        metrics=["face_sim_dlib", "ffc", "params", "steps"],
        seeds=[0, 1],
        out=Path(out),
        progress=False,
        report=False,
    )
    summary = Evaluator(cfg).run()
    return summary.generated, summary.by_others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48, help="items scored (default 48)")
    parser.add_argument("--size", type=int, default=512, help="image long side (default 512)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from instantportrait.environment import environment_report
    from instantportrait.evaluation.metrics import METRICS, ModelHub
    from instantportrait.evaluation.protocols import Prompt
    from instantportrait.evaluation.runner import EvaluationConfig, Evaluator
    from instantportrait.io import ResolutionPolicy
    from instantportrait.writer import atomic_write

    policy = ResolutionPolicy(long_side=args.size)
    inputs = {}
    for name in ("astronaut.png", "grace_hopper.jpg"):
        with Image.open(ROOT / "examples" / name) as im:
            inputs[name] = policy.apply(im.convert("RGB"))
    with_face, no_face = [], []
    for k, img in inputs.items():
        faces, blank = _variants(img)
        with_face += [(k, img, out) for out in faces]
        no_face.append((k, img, blank))
    pool = [p for k in range(2) for p in (*with_face[3 * k : 3 * k + 3], no_face[k])]
    pairs = [pool[i % len(pool)] for i in range(args.items)]

    hub = ModelHub()
    t0 = time.perf_counter()
    for name in ("face_sim_dlib", "ffc"):
        reason = hub.check(METRICS[name])
        if reason:
            raise SystemExit(f"{name} unavailable: {reason}")
    load_s = time.perf_counter() - t0
    _score(hub, ["face_sim_dlib", "ffc"], pool)  # warm-up: inputs' faces cached, as in a run

    results: dict[str, dict] = {}
    for label, names, items in (
        ("face_sim_dlib+ffc, mixed (1/4 face-free)", ["face_sim_dlib", "ffc"], pairs),
        ("face_sim_dlib+ffc, outputs with a face", ["face_sim_dlib", "ffc"], with_face),
        ("face_sim_dlib+ffc, face-free outputs", ["face_sim_dlib", "ffc"], no_face),
        ("ffc only, mixed", ["ffc"], pairs),
        ("face_sim_dlib only, mixed", ["face_sim_dlib"], pairs),
    ):
        items = [items[i % len(items)] for i in range(len(pairs))]
        seconds, status = _score(hub, names, items)
        results[label] = {
            "items": len(items),
            "seconds": round(seconds, 3),
            "items_per_s": round(len(items) / seconds, 2),
            "rows": status,
        }
        print(f"{label:<42} {len(items) / seconds:7.2f} items/s  ({seconds:.2f} s, {status})")

    with tempfile.TemporaryDirectory() as tmp:
        faces = []
        for k, img in inputs.items():
            p = Path(tmp) / f"{Path(k).stem}.png"
            img.save(p)
            faces.append(p)
        n_prompts = max(1, args.items // (2 * len(faces)))
        prompts = [Prompt(f"prompt {i}", "all", i) for i in range(n_prompts)]  # identity: faces
        cfg = EvaluationConfig(
            faces=faces,
            prompts=prompts,
            methods={"identity": "identity"},
            metrics=["face_sim_dlib", "ffc", "params", "steps"],
            seeds=[0, 1],
            out=Path(tmp) / "run",
            progress=False,
            report=False,
        )
        t = time.perf_counter()
        summary = Evaluator(cfg, hub=hub).run()
        seconds = time.perf_counter() - t
        results["runner, identity method (outputs with a face)"] = {
            "items": summary.items,
            "seconds": round(seconds, 3),
            "items_per_s": round(summary.items / seconds, 2),
        }
        print(
            f"{'runner, identity method (with a face)':<42} {summary.items / seconds:7.2f} items/s"
        )

        # two runs sharing one output folder (two processes, as two commands would be):
        # they claim items in the store and split the work
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        shared = Path(tmp) / "shared"
        t = time.perf_counter()
        with ctx.Pool(2) as pool:
            runs = pool.starmap(
                _one_run,
                [([str(f) for f in faces], n_prompts, str(shared), args.threads)] * 2,
            )
        seconds = time.perf_counter() - t
        results["runner, two concurrent runs into one folder (processes)"] = {
            "items": summary.items,
            "seconds_incl_process_start": round(seconds, 3),
            "items_per_s": round(summary.items / seconds, 2),
            "generated_by_each_run": [r[0] for r in runs],
            "done_by_the_other_run": [r[1] for r in runs],
        }
        print(
            f"{'runner, two concurrent processes, one folder':<42} "
            f"{summary.items / seconds:7.2f} items/s (generated {[r[0] for r in runs]}, "
            f"incl. process start)"
        )

    report = {
        "benchmark": "evaluation scoring throughput, offline metrics, CPU",
        "date": time.strftime("%Y-%m-%d"),
        "image_long_side": args.size,
        "torch_threads": torch.get_num_threads(),
        "model_load_s": round(load_s, 3),
        "results": results,
        "environment": environment_report(),
    }
    text = json.dumps(report, indent=2)
    atomic_write(RESULTS, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
