"""A tiny pair dataset made from the bundled portraits, with dlib landmarks when available."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

INSTRUCTIONS = [
    "as a sepia photograph",
    "with inverted colours",
    "as a sepia photograph",
    "with inverted colours",
]


def dlib_landmarks5(image: Image.Image) -> list[list[float]] | None:
    try:
        import dlib
    except ImportError:
        return None
    from instantportrait.faces.model_files import dlib_model_path

    arr = np.asarray(image.convert("RGB"))
    dets = dlib.get_frontal_face_detector()(arr, 1)
    if not dets:
        return None
    det = max(dets, key=lambda r: r.width() * r.height())
    shape = dlib.shape_predictor(str(dlib_model_path("landmarks_5")))(arr, det)
    return [[float(p.x), float(p.y)] for p in shape.parts()]


def make_pairs(root: Path, images: list[Image.Image], with_landmarks: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "inputs").mkdir(exist_ok=True)
    (root / "targets").mkdir(exist_ok=True)
    rows = []
    for i, image in enumerate(images):
        target = (
            ImageOps.colorize(ImageOps.grayscale(image), "#3b2a1a", "#f2e3c6")
            if i % 2 == 0
            else ImageOps.invert(image)
        )
        image.save(root / "inputs" / f"{i:03d}.png")
        target.save(root / "targets" / f"{i:03d}.jpg", quality=90)
        row = {
            "input": f"inputs/{i:03d}.png",
            "instruction": INSTRUCTIONS[i % 4],
            "target": f"targets/{i:03d}.jpg",
            "key": f"p{i}",
        }
        lm = dlib_landmarks5(image) if with_landmarks else None
        if lm is not None:
            row["landmarks"] = lm
        rows.append(row)
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.fixture(scope="session")
def portraits(astronaut_path, grace_hopper_path) -> list[Image.Image]:
    a = Image.open(astronaut_path).convert("RGB").resize((256, 256))
    g = Image.open(grace_hopper_path).convert("RGB").crop((0, 44, 512, 556)).resize((256, 256))
    return [a, g, ImageOps.mirror(a), ImageOps.mirror(g)]


@pytest.fixture(scope="session")
def pair_dir(tmp_path_factory, portraits) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs") / "manifest", portraits)


@pytest.fixture(scope="session")
def pair_dir_no_landmarks(tmp_path_factory, portraits) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs") / "bare", portraits, with_landmarks=False)


@pytest.fixture(scope="session")
def kontext_dir(tmp_path_factory) -> Path:
    """A tiny FLUX.1 Kontext pipeline folder (``init-tiny --kind kontext``)."""
    from instantportrait.backbones.kontext_components import write_tiny_kontext

    path = tmp_path_factory.mktemp("kontext") / "base"
    write_tiny_kontext(path)
    return path


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory) -> Path:
    """A tiny Qwen-Image-Edit pipeline folder (``init-tiny --kind qwen-edit``)."""
    from instantportrait.tiny import write_tiny

    path = tmp_path_factory.mktemp("qwen-edit") / "base"
    write_tiny(path, "qwen-edit")
    return path


@pytest.fixture(scope="session")
def qwen_plus_dir(tmp_path_factory) -> Path:
    """A tiny Qwen-Image-Edit-2509-layout folder (``init-tiny --kind qwen-edit-plus``)."""
    from instantportrait.tiny import write_tiny

    path = tmp_path_factory.mktemp("qwen-edit-plus") / "base"
    write_tiny(path, "qwen-edit-plus")
    return path
