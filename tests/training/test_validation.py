"""The validation grid's identity measure: dlib's descriptor distance and its 0.6 verdict."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instantportrait.training.validation import DLIB_SAME_PERSON, identity_distance, verdict


def test_dlib_distance_reads_same_and_different_people(portraits):
    pytest.importorskip("dlib")
    from instantportrait.data.dataset import detect_landmarks5
    from instantportrait.faces.embedders import get_embedder

    emb = get_embedder("dlib")
    astronaut, hopper = portraits[0], portraits[1]
    lm = detect_landmarks5()(astronaut)
    assert identity_distance(emb, astronaut, astronaut, lm) == pytest.approx(0.0, abs=1e-5)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
    other = identity_distance(emb, astronaut, noise, lm)
    assert other > DLIB_SAME_PERSON and verdict(other) == "different person"
    two = identity_distance(emb, astronaut, hopper, lm)  # another person at those points
    assert two > DLIB_SAME_PERSON
    assert verdict(0.3) == "same person" and verdict(0.6) == "different person"
    assert identity_distance(emb, astronaut, astronaut, None) is None
