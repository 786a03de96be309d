"""Fixtures of the face-stack tests: the bundled portraits, their detections, dlib itself.

Everything is module- or session-scoped and small, so the face tests stay fast on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def _rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.fixture(scope="session")
def astronaut(astronaut_path) -> Image.Image:
    """scikit-image's astronaut, 512x512 RGB (one frontal face, a mission patch on the arm)."""
    return _rgb(astronaut_path)


@pytest.fixture(scope="session")
def grace_hopper(grace_hopper_path) -> Image.Image:
    """matplotlib's grace_hopper, 512x600 RGB (one frontal face)."""
    return _rgb(grace_hopper_path)


@pytest.fixture(scope="session")
def astronaut_half(astronaut) -> Image.Image:
    return astronaut.resize((256, 256), Image.Resampling.LANCZOS)


@pytest.fixture(scope="session")
def grace_hopper_half(grace_hopper) -> Image.Image:
    return grace_hopper.resize((256, 300), Image.Resampling.LANCZOS)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """``(1, 3, H, W)`` float in [0, 1]."""
    arr = np.array(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


@pytest.fixture(scope="session")
def to_tensor():
    """PIL image -> ``(1, 3, H, W)`` float tensor in [0, 1]."""
    return _to_tensor


@pytest.fixture(scope="session")
def dlib_module():
    return pytest.importorskip("dlib")


@pytest.fixture(scope="session")
def astronaut_faces(dlib_module, astronaut):
    from instantportrait.faces.detect import detect

    return detect(astronaut)


@pytest.fixture(scope="session")
def grace_hopper_faces(dlib_module, grace_hopper):
    from instantportrait.faces.detect import detect

    return detect(grace_hopper)


@pytest.fixture(scope="session")
def dlib_embedder(dlib_module, tmp_path_factory):
    """The PyTorch port of dlib's ResNet (skipped when the port is absent)."""
    try:
        from instantportrait.faces.dlib_resnet import DlibResNetEmbedder
    except ImportError:
        pytest.skip("the dlib ResNet port is not available")
    return DlibResNetEmbedder.load(cache_dir=tmp_path_factory.mktemp("dlib-cache"))
