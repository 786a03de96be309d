"""AM2's fast implementation (kthvalue quantile, in-place token-major work) against a plain one.

The reference below is written the straightforward way, independently of the module: the map
by ``torch.softmax`` over the last axis, ``torch.quantile``, ``amin``/``amax`` over three axes,
``torch.std``, a full-size ``where`` for the NaN rule. Inputs include ties along the queries,
maps constant along the queries, a map constant everywhere (min == max) and a NaN-producing
value, so an optimisation cannot silently change what AM2 computes.
"""

from __future__ import annotations

import pytest
import torch

from instantportrait.attention import AMPreset, am_preset, manipulated_ip_attention
from instantportrait.attention_maps import _mean_std, _quantile_over_queries, scheduled_soft_mask

EPS = 1e-6


def _plain_adain(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
    return (x - mean) / (std + EPS) * ref.std(-1, keepdim=True) + ref.mean(-1, keepdim=True)


def _plain_soft_mask(a: torch.Tensor, d: float, qa: float, s: float) -> torch.Tensor:
    """FastFace eqs. 9 with the code's semantics (spec §3.3), one plain step per line."""
    a = a.clone()
    a[..., 0] = 1 - a[..., 0]
    level = torch.quantile(a, qa, dim=2, keepdim=True).clamp(min=1e-6)
    lo, hi = a.amin(dim=(0, 1, 2), keepdim=True), a.amax(dim=(0, 1, 2), keepdim=True)
    r = torch.sigmoid(d * ((a - lo) / (hi - lo + EPS) - level))
    lo, hi = r.amin(dim=(0, 1, 2), keepdim=True), r.amax(dim=(0, 1, 2), keepdim=True)
    m = torch.clamp(s * (r - lo) / (hi - lo + EPS), max=10.0)
    m[..., 0] = m[..., 0].max(dim=2, keepdim=True).values - m[..., 0]
    return m


def _plain_am2(q, k, v, d: float, qa: float, s: float, w: float, adain: bool) -> torch.Tensor:
    """FastFace eqs. 7, 9, 10: the IP branch's output under AM2, written plainly."""
    a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    m = _plain_soft_mask(a, d, qa, s)
    if not adain:
        return m @ v
    m = w * m + (1 - w) * _plain_adain(m, a)
    h = m @ v
    blended = w * h + (1 - w) * _plain_adain(h, a @ v)
    return h if torch.isnan(blended).any() else blended


def _tied(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Queries drawn from 3 distinct rows: every map value repeats along the queries."""
    rows = torch.randn(*shape[:-2], 3, shape[-1], generator=g)
    pick = torch.randint(0, 3, (shape[-2],), generator=g)
    return rows[..., pick, :]


def _cases():
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    yield "random", rand(2, 3, 37, 16), rand(2, 3, 4, 16), rand(2, 3, 4, 16)
    yield "ties", _tied((2, 3, 40, 16), g), rand(2, 3, 4, 16), rand(2, 3, 4, 16)
    # one query row repeated: each (batch, head, token) is constant along the queries
    q = rand(2, 3, 1, 16).expand(2, 3, 9, 16).contiguous()
    yield "constant rows", q, rand(2, 3, 4, 16), rand(2, 3, 4, 16)
    # all-zero queries: A = 1/4 everywhere, min == max for every token
    yield "constant map", torch.zeros(1, 2, 5, 16), rand(1, 2, 4, 16), rand(1, 2, 4, 16)
    yield "one query", rand(2, 2, 1, 16), rand(2, 2, 4, 16), rand(2, 2, 4, 16)


CASES = list(_cases())
#: On a map constant everywhere, ``max - min`` of the sigmoid map is a rounding residue (torch's
#: vectorised and scalar sigmoid paths differ by 1 ulp, ~2e-9 here), so the mask is that residue
#: over eps: s * 2e-9 / 1e-6 ~ 3e-3 in ANY implementation (the plain one included), where the
#: exact result is 0. That case is compared at this bound; all others at 1e-5.
DEGENERATE_ATOL = 1e-2


def _atol(name: str) -> float:
    return DEGENERATE_ATOL if name == "constant map" else 1e-5


@pytest.mark.parametrize("data", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("step", [0, 1, 3])
@pytest.mark.parametrize("preset", ["am2", "am2_noadain"])
def test_am2_matches_the_plain_reference(data, step: int, preset: str) -> None:
    name, q, k, v = data
    p = am_preset(preset)
    got = manipulated_ip_attention(q, k, v, p, "down", step)
    want = _plain_am2(
        q, k, v, p.at(p.sharpness, step), 0.65, p.at(p.mask_scale, step), 0.7, p.apply_adain
    )
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=_atol(name))


@pytest.mark.parametrize("data", CASES, ids=[c[0] for c in CASES])
def test_soft_mask_matches_on_a_given_map(data) -> None:
    """The same map in standard and token-major memory gives the plain reference's mask."""
    name, q, k, _ = data
    a = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    want = _plain_soft_mask(a, 5.0, 0.65, 1.55)
    token_major = a.transpose(-1, -2).contiguous().transpose(-1, -2)
    for layout in (a, token_major):
        got = scheduled_soft_mask(layout, 5.0, 0.65, 1.55)
        assert torch.isfinite(got).all()
        atol = DEGENERATE_ATOL if name == "constant map" else 2e-6
        torch.testing.assert_close(got, want, rtol=0, atol=atol)
        if name == "constant map":  # the exact answer is 0 everywhere
            assert got.abs().max() <= DEGENERATE_ATOL
    assert torch.equal(a, token_major)  # the input is not modified in place


@pytest.mark.parametrize("qa", [0.0, 0.3, 0.5, 0.65, 0.999, 1.0])
@pytest.mark.parametrize("length", [1, 2, 3, 64, 257])
def test_quantile_equals_torch_quantile_exactly(qa: float, length: int) -> None:
    g = torch.Generator().manual_seed(length)
    x = torch.rand(2, 3, length, 4, generator=g)
    x[:, :, ::2] = torch.round(x[:, :, ::2] * 4) / 4  # many ties
    x[1, 2] = 0.5  # a constant slice
    for layout in (x, x.transpose(-1, -2).contiguous().transpose(-1, -2)):
        got = _quantile_over_queries(layout, qa)
        assert torch.equal(got, torch.quantile(x, qa, dim=2, keepdim=True))


def test_nan_adain_falls_back_like_the_reference() -> None:
    """An infinite V' entry makes the output AdaIN NaN: the un-blended output is returned."""
    _, q, k, v = CASES[0]
    v = v.clone()
    v[0, 1, 2, 3] = torch.inf
    got = manipulated_ip_attention(q, k, v, "am2", "up", 1)
    want = _plain_am2(q, k, v, 5.0, 0.65, 1.55, 0.7, adain=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.isinf(got).any()


def test_adain_weight_one_is_no_adain() -> None:
    """w = 1 turns both blends into the identity, so AM2 with AdaIN equals AM2 without."""
    _, q, k, v = CASES[0]
    data = {**am_preset("am2").to_dict(), "adain_weight": [1.0]}
    with_w1 = manipulated_ip_attention(q, k, v, AMPreset.from_dict(data), "down", 2)
    without = manipulated_ip_attention(q, k, v, "am2_noadain", "down", 2)
    assert torch.equal(with_w1, without)
    assert not torch.allclose(manipulated_ip_attention(q, k, v, "am2", "down", 2), without)


def test_adain_statistics_are_torch_mean_and_unbiased_std() -> None:
    """AdaIN's ratio std_ref / std_x hides a wrong divisor, so the statistics are checked alone."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 64, generator=g)
    for t in (x, x[..., :4], x[..., :4].transpose(-1, -2).contiguous().transpose(-1, -2)):
        mean, centred, std = _mean_std(t, -1)
        torch.testing.assert_close(mean, t.mean(-1, keepdim=True), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(centred, t - t.mean(-1, keepdim=True), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(std, t.std(-1, keepdim=True), rtol=1e-6, atol=1e-7)
