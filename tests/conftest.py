"""Shared fixtures: tiny components, the bundled portraits, and marker gating.

Markers: ``slow`` runs with INSTANTPORTRAIT_SLOW=1; ``gpu`` needs CUDA; ``weights`` needs real
weights under INSTANTPORTRAIT_WEIGHTS; ``multiprocess`` (several processes through accelerate)
runs by default: two CPU processes take about 15 s.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def pytest_collection_modifyitems(config, items):
    slow = os.environ.get("INSTANTPORTRAIT_SLOW") == "1"
    weights = os.environ.get("INSTANTPORTRAIT_WEIGHTS")
    for item in items:
        if not slow and "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="slow: set INSTANTPORTRAIT_SLOW=1"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "weights" in item.keywords and not weights:
            item.add_marker(pytest.mark.skip(reason="needs INSTANTPORTRAIT_WEIGHTS=DIR"))


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    return EXAMPLES / "astronaut.png"


@pytest.fixture(scope="session")
def grace_hopper_path() -> Path:
    return EXAMPLES / "grace_hopper.jpg"


@pytest.fixture(scope="session")
def tiny_components():
    from instantportrait.components import build_components

    return build_components("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_components):
    from instantportrait.pipelines import InstantPortraitPipeline

    pipe = InstantPortraitPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipe) -> Path:
    """A tiny pipeline saved as an IPNet-like checkpoint (1 recommended step)."""
    from instantportrait.pipelines import InstantPortraitPipeline

    path = tmp_path_factory.mktemp("models") / "tiny"
    InstantPortraitPipeline(
        **tiny_pipe.components,
        recommended_steps=1,
        default_guidance_scale=1.0,
        default_image_guidance_scale=1.0,
    ).save_pretrained(path)
    return path
