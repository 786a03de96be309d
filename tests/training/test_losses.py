"""IDE-Net's loss terms against their formulas; gradients of the identity term."""

from __future__ import annotations

import math

import pytest
import torch

from instantportrait.losses.diffusion import diffusion_loss, diffusion_target
from instantportrait.losses.identity import (
    ANNEALING_KINDS,
    annealed_identity_loss,
    annealing_weight,
    idenet_loss,
    identity_distance,
)

T = torch.tensor([0, 500, 999])


@pytest.mark.parametrize("kind", ANNEALING_KINDS)
def test_annealing_weight_formulas(kind):
    a, b, alpha, t_max = 0.6, 0.2, 0.8, 999
    w = annealing_weight(T, t_max, kind, a=a, b=b, alpha=alpha)
    for t, value in zip(T.tolist(), w.tolist()):
        r = t / t_max
        expected = {
            "linear": r,
            "linear_offset": a * r + b,
            "cosine": 0.5 * alpha * (1 + math.cos(math.pi * r)) + (1 - alpha),
            "cosine_increasing": 0.5 * alpha * (1 - math.cos(math.pi * r)) + (1 - alpha),
            "constant": 1.0,
        }[kind]
        assert value == pytest.approx(expected, abs=1e-6), (kind, t)


def test_linear_weight_endpoints_and_unknown_kind():
    assert annealing_weight(T).tolist() == pytest.approx([0.0, 500 / 999, 1.0])
    with pytest.raises(ValueError, match="annealing kind"):
        annealing_weight(T, kind="quadratic")


def test_identity_terms_by_hand():
    ref = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    hat = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    l_cid = identity_distance(ref, hat)
    assert l_cid.tolist() == pytest.approx([2.0, 0.0])
    w = torch.tensor([0.5, 1.0])
    assert annealed_identity_loss(l_cid, w).item() == pytest.approx((1.0 + 0.0) / 2)
    valid = torch.tensor([False, True])
    assert annealed_identity_loss(l_cid, w, valid).item() == pytest.approx(0.0)
    assert idenet_loss(torch.tensor(0.3), torch.tensor(0.5), 0.7).item() == pytest.approx(0.65)


def test_diffusion_target_and_loss():
    noise, z0 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    ab = torch.tensor([0.3, 0.9]).view(2, 1, 1, 1)
    assert torch.equal(diffusion_target(noise, z0, ab, "epsilon"), noise)
    v = diffusion_target(noise, z0, ab, "v_prediction")
    torch.testing.assert_close(v, ab.sqrt() * noise - (1 - ab).sqrt() * z0)
    pred = torch.zeros_like(noise)
    torch.testing.assert_close(diffusion_loss(pred, noise), noise.pow(2).mean(dim=(1, 2, 3)))
