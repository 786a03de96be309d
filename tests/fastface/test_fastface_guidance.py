"""FastFace's decoupled guidance (eqs. 16-18) and rescale (eq. 6), checked against hand values."""

from __future__ import annotations

import pytest
import torch

from instantportrait.guidance import (
    DCG_ALPHA_SCHEDULE,
    DCG_BETA_SCHEDULE,
    classifier_free_guidance,
    decoupled_guidance,
    step_schedule,
)


def _full(value: float) -> torch.Tensor:
    return torch.full((1, 4, 2, 2), value)


# e_null = 1, e_1 = 3, e_2 = 10, alpha = 2, beta = 0.5, worked out by hand per equation.
@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("dcg1", 1 + 2 * (3 - 1) + 0.5 * (10 - 3)),  # eq. 16: 8.5
        ("dcg2", 1 + 2 * (3 - 1) + 0.5 * (10 - 3)),  # eq. 17: 8.5
        ("dcg3", 1 + 2 * (3 - 1) + 0.5 * (10 - 1)),  # eq. 18: 9.5
    ],
)
def test_each_variant_by_hand(variant: str, expected: float) -> None:
    out = decoupled_guidance(_full(1.0), _full(3.0), _full(10.0), 2.0, 0.5, variant=variant)
    assert torch.allclose(out, _full(expected))
    swapped = decoupled_guidance(_full(1.0), _full(10.0), _full(3.0), 2.0, 0.5, variant=variant)
    assert not torch.allclose(swapped, out)
    scales_swapped = decoupled_guidance(
        _full(1.0), _full(3.0), _full(10.0), 0.5, 2.0, variant=variant
    )
    assert not torch.allclose(scales_swapped, out)


def test_dcg2_as_linear_combination() -> None:
    """eq. 17 expanded: (1 - a) e_u + (a - b) e_i + b e_ti, on random tensors."""
    g = torch.Generator().manual_seed(0)
    eu, ei, eti = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    a, b = 1.5, 3.0
    expected = (1 - a) * eu + (a - b) * ei + b * eti
    assert torch.allclose(decoupled_guidance(eu, ei, eti, a, b, "dcg2"), expected, atol=1e-6)


@pytest.mark.parametrize("variant", ["dcg1", "dcg2"])
def test_equal_scales_are_cfg_and_ones_are_no_guidance(variant: str) -> None:
    g = torch.Generator().manual_seed(1)
    eu, e1, e2 = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    w = 4.5
    cfg = classifier_free_guidance(e2, eu, w)
    assert torch.allclose(decoupled_guidance(eu, e1, e2, w, w, variant), cfg, atol=1e-5)
    assert torch.allclose(decoupled_guidance(eu, e1, e2, 1.0, 1.0, variant), e2, atol=1e-6)


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="dcg4"):
        decoupled_guidance(_full(0), _full(0), _full(0), 1, 1, variant="dcg4")


def _std(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([s.flatten().std() for s in x])


def test_rescale_uses_the_stds_of_the_two_predictions() -> None:
    """eq. 6 by hand: e_final = e_dcg (phi (s_i + s_ti) / (2 s_dcg) + 1 - phi)."""
    g = torch.Generator().manual_seed(2)
    eu = torch.randn(2, 4, 8, 8, generator=g) * 5 + 2  # the null branch's std must not matter
    ei = torch.randn(2, 4, 8, 8, generator=g)
    eti = torch.randn(2, 4, 8, 8, generator=g) * 3
    phi = 0.75
    plain = decoupled_guidance(eu, ei, eti, 1.5, 3.0)
    out = decoupled_guidance(eu, ei, eti, 1.5, 3.0, rescale=phi)
    for n in range(2):
        si, sti, sd = ei[n].flatten().std(), eti[n].flatten().std(), plain[n].flatten().std()
        factor = phi * (si + sti) / (2 * sd) + 1 - phi
        assert torch.allclose(out[n], plain[n] * factor, atol=1e-5)
    # per-sample std after rescale: phi (s_i + s_ti) / 2 + (1 - phi) s_dcg (spec §7b)
    expected = phi * (_std(ei) + _std(eti)) / 2 + (1 - phi) * _std(plain)
    assert torch.allclose(_std(out), expected, atol=1e-5)
    # not the std of the difference terms (spec D7)
    wrong = phi * (_std(ei - eu) + _std(eti - ei)) / 2 + (1 - phi) * _std(plain)
    assert not torch.allclose(_std(out), wrong, atol=1e-2)


def test_rescale_applies_even_without_guidance() -> None:
    """The code rescales at every step: with alpha = beta = 1 e_ti still moves (spec D8)."""
    g = torch.Generator().manual_seed(3)
    eu, ei = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g) * 2
    eti = torch.randn(1, 4, 8, 8, generator=g)
    out = decoupled_guidance(eu, ei, eti, 1.0, 1.0, rescale=0.75)
    si, sti = ei.flatten().std(), eti.flatten().std()
    assert torch.allclose(out, eti * (0.75 * (si + sti) / (2 * sti) + 0.25), atol=1e-5)
    assert not torch.allclose(out, eti, atol=1e-3)


def test_published_schedules_and_other_step_counts() -> None:
    assert step_schedule(DCG_ALPHA_SCHEDULE, 4) == [1.0, 1.5, 1.5, 1.0]
    assert step_schedule(DCG_BETA_SCHEDULE, 4) == [1.0, 3.0, 3.0, 1.0]
    assert step_schedule(DCG_BETA_SCHEDULE, 6) == [1.0, 3.0, 3.0, 3.0, 3.0, 1.0]
    assert step_schedule(DCG_BETA_SCHEDULE, 2) == [1.0, 1.0]
    assert step_schedule(DCG_BETA_SCHEDULE, 1) == [1.0]
    assert step_schedule((7.5, 5.0, 5.0, 5.0), 3, keep_last=False) == [7.5, 5.0, 5.0]
    assert step_schedule((1.0, 1.55, 1.55, 1.55), 6, keep_last=False)[-1] == 1.55
