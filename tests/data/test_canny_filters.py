"""Canny edges against hand-made images; each filter reason from real portraits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from instantportrait.data import canny as canny_mod
from instantportrait.data.canny import canny, canny_image
from instantportrait.data.filters import (
    FilterConfig,
    PairFilter,
    dlib_distance,
    laplacian_variance,
)


def test_canny_finds_the_border_of_a_square_and_nothing_else():
    img = np.zeros((40, 40))
    img[10:30, 10:30] = 255.0
    edges = canny(img, 100, 200, sigma=1.0)
    ys, xs = np.nonzero(edges)
    assert len(ys) > 0
    # every edge pixel lies within one pixel of the square's boundary (rows/cols 9.5, 29.5)
    near = (np.minimum(np.abs(ys - 9.5), np.abs(ys - 29.5)) <= 1) | (
        np.minimum(np.abs(xs - 9.5), np.abs(xs - 29.5)) <= 1
    )
    assert near.all()
    # thin: along the middle row only the two sides are edges, one pixel thick each
    row = edges[20]
    assert row.sum() == 2 and row[8:12].sum() == 1 and row[28:32].sum() == 1
    assert not canny(np.full((40, 40), 128.0)).any()


def test_hysteresis_keeps_weak_pixels_only_when_joined_to_strong_ones(monkeypatch):
    strong = np.zeros((5, 9), bool)
    weak = np.zeros((5, 9), bool)
    strong[2, 0] = True
    weak[2, 0:4] = True  # chain from the strong pixel
    weak[2, 6:9] = True  # an island without a strong pixel
    with_scipy = canny_mod._hysteresis(strong, weak)
    expected = np.zeros((5, 9), bool)
    expected[2, 0:4] = True
    assert (with_scipy == expected).all()
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert (canny_mod._hysteresis(strong, weak) == expected).all()


def test_canny_image_is_white_on_black_rgb(faces):
    edges = canny_image(faces["a"])
    arr = np.asarray(edges)
    assert edges.mode == "RGB" and set(np.unique(arr)) <= {0, 255}
    assert 0.01 < (arr[..., 0] > 0).mean() < 0.3


def test_laplacian_variance_by_hand():
    # a single bright pixel: the Laplacian is -4v there and v at its 4 neighbours
    g = np.zeros((5, 5))
    g[2, 2] = 10.0
    lap = np.zeros((3, 3))
    lap[1, 1] = -40.0
    lap[0, 1] = lap[2, 1] = lap[1, 0] = lap[1, 2] = 10.0
    assert laplacian_variance(g) == pytest.approx(lap.var())
    assert dlib_distance(np.array([3.0, 0.0]), np.array([0.0, 4.0])) == pytest.approx(5.0)


@pytest.fixture(scope="module")
def pair_filter():
    pytest.importorskip("dlib")
    return PairFilter(FilterConfig())


def test_filter_keeps_the_same_person_and_stores_landmarks(pair_filter, faces):
    r = pair_filter(faces["a_mirror"], faces["a"])
    assert r.kept and r.reason is None
    assert r.metrics["identity_distance"] < 0.6
    lm = np.array(r.landmarks)
    assert lm.shape == (5, 2) and (lm > 0).all() and (lm < 256).all()


def test_filter_reasons(pair_filter, faces):
    assert pair_filter(faces["a"], faces["noise"]).reason == "no_face_target"
    assert pair_filter(faces["noise"], faces["a"]).reason == "no_face_input"
    other = pair_filter(faces["g"], faces["a"])
    assert other.reason == "identity" and other.metrics["identity_distance"] >= 0.6
    strict = PairFilter(FilterConfig(min_face_fraction=0.5), analyzer=pair_filter.analyzer)
    assert strict(faces["a_mirror"], faces["a"]).reason == "small_face"
    blurred = faces["a_mirror"].filter(ImageFilter.GaussianBlur(0.7))
    sharp = pair_filter(faces["a_mirror"], faces["a"]).metrics["sharpness"]
    soft = PairFilter(FilterConfig(min_sharpness=sharp * 0.9), analyzer=pair_filter.analyzer)
    assert soft(blurred, faces["a"]).reason == "blurry"


def test_disabled_filter_keeps_noise(faces):
    r = PairFilter(FilterConfig(enabled=False))(faces["noise"], faces["noise"])
    assert r.kept and r.landmarks is None and isinstance(faces["noise"], Image.Image)
