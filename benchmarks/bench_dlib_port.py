"""Speed of the PyTorch port of dlib's face-recognition ResNet against dlib itself (CPU).

Embeds one batch of 16 aligned 150x150 chips (made by dlib from the bundled portraits) with
dlib's batch ``compute_face_descriptor`` and with :class:`DlibResNetEmbedder`, after one
warm-up call each, and times the one-off ``.dat`` -> safetensors conversion and the cached
load. Prints a table and writes ``benchmarks/results/dlib_port.json``.

    python benchmarks/bench_dlib_port.py [--threads 1] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dlib_port.json"


def _chips(batch: int) -> list[np.ndarray]:
    """``batch`` dlib chips from the two portraits and simple augmentations of them."""
    import dlib

    from instantportrait.faces.model_files import dlib_model_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path("landmarks_5")))
    chips = []
    for name in ("astronaut.png", "grace_hopper.jpg"):
        img = Image.open(ROOT / "examples" / name).convert("RGB")
        for variant in (
            img,
            ImageOps.mirror(img),
            img.rotate(5, resample=Image.BILINEAR),
            ImageEnhance.Brightness(img).enhance(1.25),
        ):
            arr = np.asarray(variant)
            boxes, scores, _ = detector.run(arr, 0)
            best = boxes[int(np.argmax(scores))]
            chips.append(dlib.get_face_chip(arr, predictor(arr, best), size=150, padding=0.25))
    return [chips[i % len(chips)] for i in range(batch)]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--batch", type=int, default=16, help="chips per batch (default 16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import dlib

    from instantportrait.faces.dlib_resnet import DlibResNetEmbedder, convert_dlib_resnet
    from instantportrait.faces.model_files import dlib_model_path
    from instantportrait.writer import atomic_write_bytes

    dat = dlib_model_path("resnet")
    chips = _chips(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        t_convert, _ = _timed(
            lambda: convert_dlib_resnet(dat, Path(tmp) / f"{dat.stem}.safetensors")
        )
        t_load, embedder = _timed(lambda: DlibResNetEmbedder.load(cache_dir=tmp))
    recognizer = dlib.face_recognition_model_v1(str(dat))
    crops = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0

    def run_dlib() -> np.ndarray:
        return np.array([np.array(v) for v in recognizer.compute_face_descriptor(chips)])

    def run_port() -> np.ndarray:
        with torch.inference_mode():
            return embedder(crops).numpy()

    run_dlib(), run_port()  # warm-up
    t_dlib, ref = _timed(run_dlib)
    t_port, out = _timed(run_port)
    max_diff = float(np.abs(ref - out).max())

    rows = [
        ("dlib compute_face_descriptor", t_dlib),
        (f"port (torch, {args.threads} thread)", t_port),
    ]
    print(f"batch of {args.batch} chips 150x150, CPU ({platform.processor() or 'cpu'})")
    print(f"{'method':<34}{'seconds':>10}{'ms/chip':>10}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>10.3f}{1000 * seconds / args.batch:>10.2f}")
    print(f"speed ratio dlib/port: {t_dlib / t_port:.2f}x   max |port - dlib|: {max_diff:.2e}")
    print(f"one-off conversion .dat -> safetensors: {t_convert:.3f} s; cached load {t_load:.3f} s")

    result = {
        "batch": args.batch,
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "dlib": dlib.__version__,
        "seconds_dlib": t_dlib,
        "seconds_port": t_port,
        "ratio_dlib_over_port": t_dlib / t_port,
        "max_abs_diff": max_diff,
        "seconds_convert": t_convert,
        "seconds_cached_load": t_load,
    }
    atomic_write_bytes(RESULTS, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
