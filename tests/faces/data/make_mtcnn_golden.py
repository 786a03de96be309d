"""Regenerate the MTCNN fixture from facenet-pytorch itself (run in a venv of its own).

facenet-pytorch pins old torch versions, so it never enters the project's environment:

    python -m venv /work/venvs/facenet
    /work/venvs/facenet/bin/pip install torch==2.14.1 torchvision==0.29.1 requests tqdm \
        pillow==12.3.0  # the project venv's Pillow: 13.0 resizes down differently (1 level)
    /work/venvs/facenet/bin/pip install --no-deps facenet-pytorch==2.6.0
    /work/venvs/facenet/bin/python tests/faces/data/make_mtcnn_golden.py

It writes ``mtcnn_golden.json`` (boxes, probabilities and points of every face MTCNN finds in
the repository's two photos, largest first, as ``MTCNN.detect``) and
``mtcnn_golden_<photo>_<i>.png`` (the 160-px crop that
``MTCNN(keep_all=True, post_process=False)`` returns, margin 0), next to this script.
``tests/faces/test_mtcnn.py`` compares ours with them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PHOTOS = {
    "astronaut": ROOT / "examples/astronaut.png",
    "grace_hopper": ROOT / "examples/grace_hopper.jpg",
}


def main() -> int:
    import facenet_pytorch
    import PIL
    import torchvision

    detector = MTCNN(keep_all=True, post_process=False, image_size=160, margin=0)
    golden: dict = {
        "facenet_pytorch": getattr(facenet_pytorch, "__version__", "2.6.0"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "photos": {},
    }
    for name, path in PHOTOS.items():
        img = Image.open(path).convert("RGB")
        boxes, probs, points = detector.detect(img, landmarks=True)
        crops = detector(img)
        golden["photos"][name] = {
            "boxes": np.asarray(boxes, dtype=np.float64).tolist(),
            "probs": np.asarray(probs, dtype=np.float64).tolist(),
            "points": np.asarray(points, dtype=np.float64).tolist(),
        }
        for i, crop in enumerate(crops):
            arr = crop.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
            Image.fromarray(arr).save(HERE / f"mtcnn_golden_{name}_{i}.png")
        print(name, len(boxes), "faces", file=sys.stderr)
    (HERE / "mtcnn_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
