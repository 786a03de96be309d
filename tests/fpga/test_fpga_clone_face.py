"""Clone Face Tuning: the splice and the clone-face attention loss (FPGA eq. 2, eq. 4)."""

from __future__ import annotations

import math

import numpy as np
import torch

from instantportrait.losses.clone_face import (
    cft_due,
    clone_face_attention_loss,
    clone_face_splice,
    fpga_loss,
    gaussian_window,
)


def test_splice_puts_the_same_face_in_both_halves_with_same_shaped_masks():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 32, 64)
    cond = torch.rand(1, 3, 32, 64)
    box = torch.tensor([[40.0, 8.0, 52.0, 20.0]])  # a 12-px face right of centre
    x, c, b1, b2 = clone_face_splice(img, cond, box)
    assert x.shape == img.shape and c.shape == cond.shape
    torch.testing.assert_close(x[..., :32], x[..., 32:])
    torch.testing.assert_close(c[..., :32], c[..., 32:])
    w1, h1 = (b1[0, 2] - b1[0, 0]).item(), (b1[0, 3] - b1[0, 1]).item()
    w2, h2 = (b2[0, 2] - b2[0, 0]).item(), (b2[0, 3] - b2[0, 1]).item()
    assert (w1, h1) == (w2, h2) == (12.0, 12.0)
    assert b2[0, 0] - b1[0, 0] == 32 and b1[0, 0] >= 0 and b1[0, 2] <= 32
    # the face pixels moved with the box: left copy's box == the original face
    x0, y0, x1, y1 = (int(v) for v in b1[0].tolist())
    torch.testing.assert_close(x[0, :, y0:y1, x0:x1], img[0, :, 8:20, 40:52])
    # centred: the crop starts at face centre - W/4 = 46 - 16 = 30
    torch.testing.assert_close(x[0, :, :, :32], img[0, :, :, 30:62])


def test_splice_of_a_face_wider_than_half_squeezes_the_image():
    img = torch.rand(1, 3, 16, 32)
    x, _, b1, b2 = clone_face_splice(img, img.clone(), torch.tensor([[2.0, 2.0, 30.0, 14.0]]))
    torch.testing.assert_close(x[..., :16], x[..., 16:])
    assert b1[0].tolist() == [1.0, 2.0, 15.0, 14.0] and b2[0].tolist() == [17.0, 2.0, 31.0, 14.0]


def test_gaussian_window_peak_and_sigma():
    g = gaussian_window(33)
    assert g[16, 16] == 1.0
    # sigma = 33/4: one sigma from the centre along one axis gives exp(-1/2)
    sigma = 33 / 4
    x = np.arange(33) - 16.0
    assert math.isclose(float(g[16, 24]), math.exp(-(8.0**2) / (2 * sigma**2)), rel_tol=1e-6)
    assert math.isclose(float(g[0, 0]), math.exp(-(x[0] ** 2) / sigma**2), rel_tol=1e-5)


def test_loss_is_zero_when_the_two_face_maps_are_equal():
    torch.manual_seed(0)
    half = torch.rand(2, 4, 64, 32)
    maps = [torch.cat([half, half], dim=-1), torch.cat([half, half], dim=-1)[..., ::2, ::2]]
    b1 = torch.tensor([[80.0, 160.0, 176.0, 256.0]] * 2)
    b2 = b1 + torch.tensor([256.0, 0, 256.0, 0])
    loss = clone_face_attention_loss(maps, b1, b2, latent_hw=(64, 64))
    assert float(loss) < 1e-12


def test_loss_against_an_independent_closed_form():
    """Face regions constant a (left) and b (right): loss = (a-b)^2 * mean(G^2), G separable."""
    a, b = 0.7, 0.2
    m = torch.zeros(1, 4, 64, 64)
    m[..., 8:16, 4:12] = a  # M1 in latent cells; box 32..96 x 64..128 px
    m[..., 8:16, 36:44] = b  # M2 = M1 + 32 cells
    b1 = torch.tensor([[32.0, 64.0, 96.0, 128.0]])
    b2 = b1 + torch.tensor([256.0, 0, 256.0, 0])
    loss = clone_face_attention_loss([m], b1, b2, latent_hw=(64, 64))
    s = 32  # box side 8 cells < 32 -> S = 32
    r = np.arange(s) - (s - 1) / 2
    mean_g2 = (np.exp(-(r**2) / (2 * (s / 4) ** 2)) ** 2).mean() ** 2
    assert math.isclose(float(loss), (a - b) ** 2 * mean_g2, rel_tol=1e-5)
    # swapping the two boxes gives the same value (symmetric), moving one box does not
    assert math.isclose(float(clone_face_attention_loss([m], b2, b1, (64, 64))), float(loss))
    moved = clone_face_attention_loss([m], b1, b2 + torch.tensor([64.0, 0, 64.0, 0]), (64, 64))
    assert not math.isclose(float(moved), float(loss), rel_tol=1e-3)


def test_loss_sends_gradients_to_the_maps():
    m = torch.rand(1, 4, 32, 32, requires_grad=True)
    b1 = torch.tensor([[16.0, 16.0, 64.0, 64.0]])
    clone_face_attention_loss([m], b1, b1 + torch.tensor([128.0, 0, 128.0, 0]), (32, 32)).backward()
    assert m.grad is not None and m.grad.abs().sum() > 0


def test_cft_schedule_and_total_loss():
    assert [s for s in range(25) if cft_due(s)] == [0, 10, 20]
    assert not cft_due(3, every=0)
    one, two = torch.tensor(1.0), torch.tensor(2.0)
    assert float(fpga_loss(one, None)) == 1.0
    assert math.isclose(float(fpga_loss(one, two)), 1.4, rel_tol=1e-6)
