"""Fixtures of the FPGA tests: a synthetic portrait dataset (no face detection needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image


def _landmarks(cx: float, cy: float, r: float) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


@pytest.fixture(scope="session")
def portrait_dir(tmp_path_factory):
    """Four rows of 64x48 noise with a 16-px 'face', keypoints for two of them."""
    root = tmp_path_factory.mktemp("portraits")
    rng = np.random.default_rng(0)
    for sub in ("images", "faces", "masks"):
        (root / sub).mkdir()
    rows = []
    for i in range(4):
        key = f"{i:04d}"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            root / "images" / f"{key}.png"
        )
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(
            root / "faces" / f"{key}.png"
        )
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / "masks" / f"{key}.png")
        cx = 18 + 8 * i
        kps = np.zeros((1, 18, 3))
        kps[0, :, 0] = cx + rng.normal(0, 6, 18)
        kps[0, :, 1] = 10 + np.arange(18) * 2
        kps[0, :, 2] = 1
        rows.append(
            {
                "key": key,
                "caption": f"a person number {i}",
                "image": f"images/{key}.png",
                "face": f"faces/{key}.png",
                "mask": f"masks/{key}.png",
                "landmarks": _landmarks(cx, 16, 7).round(2).tolist(),
                "face_box": [cx - 8, 8, cx + 8, 24],
                "keypoints": kps.tolist() if i % 2 == 0 else None,
            }
        )
    (root / "portraits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"format": "instantportrait-portraits-1", "face_template": "dlib", "face_size": 224}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def tiny_fpga(tmp_path_factory):
    """A tiny FPGA pipeline folder written by ``init-tiny --kind fpga``'s writer."""
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny") / "fpga", "fpga")
