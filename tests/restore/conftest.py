"""Shared fixtures of the DIIR tests: one tiny restore bundle, the shrunk astronaut."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def restore_bundle(tmp_path_factory) -> Path:
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("diir") / "model", "restore", seed=0)


@pytest.fixture(scope="session")
def diir_pipe(restore_bundle):
    from instantportrait.pipelines.restore import DIIRPipeline

    pipe = DIIRPipeline.from_pretrained(restore_bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def small_astronaut() -> Image.Image:
    """scikit-image's astronaut at 256 px: one face of about 45 px (below the 100 px trigger)."""
    return Image.open(REPO / "examples" / "astronaut.png").convert("RGB").resize((256, 256))
