"""FaceA-Net fixtures: three small photos (the bundled portraits, flipped and cropped), a tiny
SD-inpainting model written by ``init-tiny --kind inpaint``, and one tiny tuned identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageOps

pytest.importorskip("dlib")
pytest.importorskip("peft")


@pytest.fixture(scope="session")
def photos(tmp_path_factory, astronaut_path) -> list[Path]:
    """Three photos of ONE person (the astronaut): whole, cropped tighter, cropped + mirrored."""
    root = tmp_path_factory.mktemp("photos")
    src = Image.open(astronaut_path).convert("RGB")
    a = src.resize((256, 256))
    tight = src.crop((40, 0, 420, 380)).resize((256, 256))
    cropped = src.crop((60, 0, 380, 320)).resize((256, 256))
    paths = []
    for name, im in (
        ("a.png", a),
        ("a_tight.png", tight),
        ("a_flip_crop.png", ImageOps.mirror(cropped)),
    ):
        im.save(root / name)
        paths.append(root / name)
    return paths


@pytest.fixture(scope="session")
def other_person(tmp_path_factory, grace_hopper_path) -> Path:
    """A photo of another person (Grace Hopper): the attribute swap's donor, a mixed set."""
    path = tmp_path_factory.mktemp("other") / "g.png"
    g = Image.open(grace_hopper_path).convert("RGB").crop((0, 30, 512, 542)).resize((256, 256))
    g.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("models") / "inpaint", "inpaint", seed=0)


def config_dict(photos, base, out, **sections) -> dict:
    cfg = {
        "model": {"base": str(base), "lora_rank": 4, "lora_alpha": 4.0},
        "data": {"images": [str(p) for p in photos], "gender": "woman", "resolution": 64},
        "training": {
            "output_dir": str(out),
            "max_steps": 2,
            "batch_size": 2,
            "tensorboard": False,
            "validate_every": 0,
            "checkpoint_every": 2,
        },
        "validation": {"steps": 2},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def make_trainer(photos, base, out, **sections):
    from instantportrait.training.config import from_dict
    from instantportrait.training.faceanet import FaceANetConfig, FaceANetTrainer

    return FaceANetTrainer(from_dict(FaceANetConfig, config_dict(photos, base, out, **sections)))


@pytest.fixture
def trainer_factory(photos, tiny_base):
    """``factory(out_dir, **sections)``: a FaceA-Net trainer on the photos and the tiny model."""
    return lambda out, **sections: make_trainer(photos, tiny_base, out, **sections)


@pytest.fixture(scope="session")
def train_args() -> list[str]:
    return list(TRAIN_ARGS)


TRAIN_ARGS = [
    "--set",
    "data.resolution=64",
    "--set",
    "model.lora_rank=4",
    "--set",
    "model.lora_alpha=4",
    "--set",
    "training.batch_size=2",
    "--set",
    "training.tensorboard=false",
    "--set",
    "training.log_every=1",
    "--set",
    "validation.steps=2",
]


@pytest.fixture(scope="session")
def tuned(tmp_path_factory, photos, tiny_base) -> Path:
    """A 2-step tuned identity (run folder) with a validation grid and a checkpoint."""
    from instantportrait.cli import main

    run = tmp_path_factory.mktemp("runs") / "alice"
    code = main(
        [
            "train",
            "faceanet",
            "--images",
            *map(str, photos),
            "--gender",
            "woman",
            "--base",
            str(tiny_base),
            "--steps",
            "2",
            "-o",
            str(run),
            *TRAIN_ARGS,
            "--set",
            "training.validate_every=2",
            "--set",
            "training.checkpoint_every=2",
        ]
    )
    assert code == 0
    return run
