"""Fixtures of the dataset-pipeline tests: the tiny dataset bundle, portraits, a fake backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from instantportrait.data.pair_drawing import Backend


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("bundle") / "dataset", "dataset", seed=0)


@pytest.fixture(scope="session")
def faces(astronaut_path, grace_hopper_path) -> dict[str, Image.Image]:
    a = Image.open(astronaut_path).convert("RGB").resize((256, 256))
    g = Image.open(grace_hopper_path).convert("RGB").crop((0, 44, 512, 556)).resize((256, 256))
    return {"a": a, "a_mirror": ImageOps.mirror(a), "g": g, "noise": Image.new("RGB", (256, 256))}


class ScriptedBackend(Backend):
    """Returns prepared images per row position: ``script[position % len] = (input, target)``."""

    def __init__(self, script: list[tuple[Image.Image, Image.Image]]):
        self.script = script
        self.calls: list[tuple[str, int]] = []

    def targets(self, rows, generators):
        self.calls += [("target", r["_position"]) for r in rows]
        return [self.script[r["_position"] % len(self.script)][1] for r in rows]

    def inputs(self, rows, targets, edges, generators):
        self.calls += [("input", r["_position"]) for r in rows]
        return [self.script[r["_position"] % len(self.script)][0] for r in rows]


@pytest.fixture
def scripted_backend():
    """The :class:`ScriptedBackend` class."""
    return ScriptedBackend


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(root / "src") + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env
