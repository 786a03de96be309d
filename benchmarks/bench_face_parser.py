"""The BiSeNet face parser at the released size (random weights): its cost per face in DIIR.

DIIR asks the parser for M_B of every restored face (the restorer's two calls per face share
one forward). Times, on the architecture of face-parsing.PyTorch's ``79999_iter.pth`` (19
classes, ResNet-18 context path; speed does not depend on the weights' values): one 512²
crop through :class:`FaceParser` (preprocessing, network, class mask; median of
``--repeats``), and the network alone for batches of 1 and 4. Writes
``benchmarks/results/face_parser_<device>.json``.

    python benchmarks/bench_face_parser.py [--repeats 5] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def median_seconds(fn, repeats: int, sync) -> tuple[float, float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from instantportrait.cli.env import environment_report
    from instantportrait.faces.parsing import BiSeNet, FaceParser

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = BiSeNet().eval().to(device)
    parser = FaceParser(model)
    rng = np.random.default_rng(0)
    crop = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
    landmarks = np.zeros((68, 2))
    results = {}

    def one_face():
        parser._last = None  # a new face each time (no reuse of the previous parse)
        parser(crop, landmarks)

    results["face_parser_per_crop_s"] = median_seconds(one_face, args.repeats, sync)
    for batch in (1, 4):
        x = torch.randn(batch, 3, 512, 512, device=device)
        with torch.no_grad():
            med = median_seconds(lambda x=x: model(x), args.repeats, sync)
        results[f"network_batch{batch}_s"] = med
    params = sum(p.numel() for p in model.parameters())
    for k, (m, lo, hi) in results.items():
        print(f"{k:28s} {m:7.3f} s  (min {lo:.3f}, max {hi:.3f})")
    per_face_b4 = results["network_batch4_s"][0] / 4
    print(f"network per face at batch 4: {per_face_b4:.3f} s; parameters {params / 1e6:.1f} M")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment_report(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch_threads": torch.get_num_threads(),
        "parameters": params,
        "results": {k: {"median": m, "min": lo, "max": hi} for k, (m, lo, hi) in results.items()},
        "network_per_face_batch4_s": per_face_b4,
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"face_parser_{device.type}.json")
    from instantportrait.benchmark.report import write_results

    print(write_results(report, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
