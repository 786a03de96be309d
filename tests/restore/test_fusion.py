"""AdaIN and MGFF (FPGA Alg. 1 lines 6/8) against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from instantportrait.restoration.fusion import adain, masked_mean_std, mgff, resize_mask


def _map(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, -1)


def test_adain_by_hand():
    # x = [1, 3]: mean 2, std 1. y = [10, 14]: mean 12, std 2. AdaIN(x; y) = 2*(x-2)+12.
    out = adain(_map([1.0, 3.0]), _map([10.0, 14.0]), eps=0.0)
    assert torch.allclose(out, _map([10.0, 14.0]))
    # swapped arguments give y normalised to x's statistics instead
    back = adain(_map([10.0, 14.0]), _map([1.0, 3.0]), eps=0.0)
    assert torch.allclose(back, _map([1.0, 3.0]))
    assert not torch.allclose(out, back)


def test_masked_statistics_by_hand():
    x = _map([0.0, 4.0, 100.0])
    w = _map([1.0, 1.0, 0.0])
    mean, std = masked_mean_std(x, w, eps=0.0)
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(2.0)


def test_mgff_composite_keeps_background_and_renormalises_face():
    restored = _map([1.0, 3.0, 5.0, 7.0])  # mean 4, population std sqrt(5)
    cached = _map([10.0, 10.0, 20.0, 20.0])  # mean 15, std 5
    mask = _map([0.0, 0.0, 1.0, 1.0])
    out = mgff(restored, cached, mask)
    s = 5.0 / 5.0**0.5
    expected = _map([10.0, 10.0, 15 + s * 1.0, 15 + s * 3.0])
    assert torch.allclose(out, expected, atol=1e-4)
    # a half mask blends the two
    half = mgff(restored, cached, mask * 0 + 0.5)
    norm = adain(restored, cached)
    assert torch.allclose(half, 0.5 * norm + 0.5 * cached)


def test_mgff_stats_regions_differ_as_defined():
    restored = _map([1.0, 3.0, 5.0, 7.0])
    cached = _map([10.0, 10.0, 20.0, 24.0])
    mask = _map([0.0, 0.0, 1.0, 1.0])
    face = mgff(restored, cached, mask, "face")
    # face statistics: restored face [5, 7] (mean 6, std 1) -> cached face [20, 24] (22, 2)
    assert torch.allclose(face[..., 2:], _map([20.0, 24.0]), atol=1e-4)
    literal = mgff(restored, cached, mask, "literal")
    # literal: stats of restored*M = [0,0,5,7] and of cached*(1-M) = [10,10,0,0]
    xr = torch.tensor([0.0, 0.0, 5.0, 7.0])
    xc = torch.tensor([10.0, 10.0, 0.0, 0.0])
    sd_r, sd_c = xr.std(unbiased=False), xc.std(unbiased=False)
    want = sd_c * (xr[2:] - xr.mean()) / sd_r + xc.mean()
    assert torch.allclose(literal[0, 0, 0, 2:].float(), want, atol=1e-3)
    assert torch.equal(literal[..., :2], cached[..., :2])
    with pytest.raises(ValueError):
        mgff(restored, cached, mask, "nope")


def test_resize_mask_shape():
    m = torch.zeros(2, 1, 64, 64)
    m[..., 16:48, 16:48] = 1
    small = resize_mask(m, (8, 8))
    assert small.shape == (2, 1, 8, 8) and small[0, 0, 4, 4] == 1 and small[0, 0, 0, 0] == 0
