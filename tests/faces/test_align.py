"""Alignment: Umeyama fit, dlib's chip reproduced, templates, differentiability, grayscale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instantportrait.faces.align import (
    DLIB_5_FROM_68,
    TEMPLATES,
    crop_faces,
    crop_matrices,
    estimate_similarity,
    get_template,
    reduce_landmarks,
    to_grayscale,
)


def _apply(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    return pts @ m[..., :2].transpose(-1, -2) + m[..., 2].unsqueeze(-2)


def test_estimate_similarity_recovers_a_known_transform():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(3, 7, 2, generator=g, dtype=torch.float64) * 100
    angle = torch.tensor([0.3, -1.2, 2.5], dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    rot = (
        torch.stack(
            [
                torch.stack([torch.cos(angle), -torch.sin(angle)], -1),
                torch.stack([torch.sin(angle), torch.cos(angle)], -1),
            ],
            -2,
        )
        * scale[:, None, None]
    )
    t = torch.tensor([[1.0, 2.0], [-30.0, 5.0], [0.0, 100.0]], dtype=torch.float64)
    truth = torch.cat([rot, t.unsqueeze(-1)], -1)
    dst = _apply(truth, src)
    assert torch.allclose(estimate_similarity(src, dst), truth, atol=1e-9)
    # With noise it is the least-squares optimum: no random similarity does better.
    noisy = dst + torch.randn(dst.shape, generator=g, dtype=torch.float64)
    fit = estimate_similarity(src, noisy)
    best = (_apply(fit, src) - noisy).pow(2).sum((-2, -1))
    for _ in range(20):
        jitter = fit + 1e-3 * torch.randn(fit.shape, generator=g, dtype=torch.float64)
        jitter[..., 1, 1] = jitter[..., 0, 0]
        jitter[..., 0, 1] = -jitter[..., 1, 0]
        assert ((_apply(jitter, src) - noisy).pow(2).sum((-2, -1)) >= best - 1e-9).all()


def test_templates_are_consistent():
    assert set(TEMPLATES) >= {"dlib", "arcface", "facenet"}
    assert TEMPLATES["arcface"].size == 112 and TEMPLATES["facenet"].size == 160
    assert TEMPLATES["dlib"].size == 150
    # insightface's arcface_dst, verbatim.
    assert np.allclose(TEMPLATES["arcface"].points68[0], (38.2946, 51.6963))
    for tpl in TEMPLATES.values():
        p5 = tpl.targets(5)
        # dlib's 5 points: image-right eye corners, image-left eye corners, nose base.
        assert p5[0, 0] > p5[1, 0] > p5[3, 0] > p5[2, 0]
        assert p5[4, 1] > p5[:4, 1].max()
        assert (p5 > 0).all() and (p5 < tpl.size).all()
    with pytest.raises(ValueError, match="template"):
        get_template("mtcnn")


def test_crop_matches_dlib_get_face_chip(
    dlib_module, astronaut, grace_hopper, astronaut_faces, grace_hopper_faces, to_tensor
):
    dlib = dlib_module
    for image, faces in ((astronaut, astronaut_faces), (grace_hopper, grace_hopper_faces)):
        arr = np.array(image)
        x = to_tensor(image)
        box = [int(v) for v in faces.boxes[0].tolist()]
        rect = dlib.rectangle(box[0], box[1], box[2] - 1, box[3] - 1)
        for lm in (faces.landmarks5, faces.landmarks68):
            parts = dlib.points([dlib.point(int(px), int(py)) for px, py in lm[0].tolist()])
            shape = dlib.full_object_detection(rect, parts)
            chip = dlib.get_face_chip(arr, shape, size=150, padding=0.25)
            ours = crop_faces(x, lm, "dlib")[0].permute(1, 2, 0).numpy()
            diff = np.abs(ours - chip.astype(np.float32) / 255.0)
            assert ours.shape == (150, 150, 3)
            assert diff.mean() < 0.004, diff.mean()  # dlib rounds to 8 bits: ~0.002
            assert diff.max() < 0.02


def test_landmarks_land_on_the_template(astronaut_faces):
    for name in ("dlib", "arcface", "facenet"):
        tpl = TEMPLATES[name]
        for lm in (astronaut_faces.landmarks5, astronaut_faces.landmarks68):
            m = crop_matrices(lm, name)  # crop -> image
            rot, t = m[0, :, :2], m[0, :, 2]
            in_crop = (reduce_landmarks(lm, name)[0] - t) @ torch.linalg.inv(rot).T
            target = torch.as_tensor(tpl.targets(lm.shape[1]), dtype=torch.float32)
            err = (in_crop - target).norm(dim=-1).mean()
            assert err < 0.06 * tpl.size, (name, lm.shape, err)


def test_5_and_68_point_crops_agree(astronaut_faces, grace_hopper_faces):
    # Geometry, not pixels: dlib's own 5- and 68-point chips differ by a few percent of scale.
    for faces in (astronaut_faces, grace_hopper_faces):
        for name in ("dlib", "arcface", "facenet"):
            size = TEMPLATES[name].size
            a = crop_matrices(faces.landmarks5, name)[0]
            b = crop_matrices(faces.landmarks68, name)[0]
            centre = torch.tensor([size / 2 - 0.5, size / 2 - 0.5, 1.0])
            scale_a, scale_b = a[:, :2].det().sqrt(), b[:, :2].det().sqrt()
            assert (a @ centre - b @ centre).norm() / scale_a < 0.04 * size, name
            assert abs(float(scale_a / scale_b) - 1) < 0.1, name
            angle = torch.atan2(a[1, 0], a[0, 0]) - torch.atan2(b[1, 0], b[0, 0])
            assert abs(float(angle)) < 0.05, name


def test_crop_batches_sizes_dtypes_and_broadcast(astronaut, astronaut_faces, to_tensor):
    x = to_tensor(astronaut)
    lm = astronaut_faces.landmarks5
    batch = torch.cat([x, x.flip(-1)])
    flipped = lm.clone()
    flipped[..., 0] = astronaut.width - 1 - flipped[..., 0]
    flipped = flipped[:, [2, 3, 0, 1, 4]]  # a mirror swaps the eyes
    out = crop_faces(batch, torch.cat([lm, flipped]), "dlib", size=64)
    assert out.shape == (2, 3, 64, 64)
    # The mirrored face, aligned, is the mirror of the aligned face.
    assert (out[0] - out[1].flip(-1)).abs().mean() < 0.05
    # (K, 2) landmarks broadcast over the batch; float64 and a shrinking crop work.
    small = crop_faces(batch.double(), lm[0], "arcface", size=24)
    assert small.shape == (2, 3, 24, 24) and small.dtype == torch.float64
    plain = crop_faces(batch, lm[0], "arcface", size=24, antialias=False)
    assert (small.float() - plain).abs().mean() < 0.05
    with pytest.raises(ValueError, match="landmarks"):
        crop_faces(batch, torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="5 \\(dlib\\) or 68"):
        crop_faces(x, torch.zeros(1, 7, 2))


def test_crop_is_differentiable_and_local(astronaut, astronaut_faces, to_tensor):
    x = to_tensor(astronaut).requires_grad_(True)
    crop = crop_faces(x, astronaut_faces.landmarks5, "dlib")
    (crop * torch.linspace(0, 1, crop.numel()).view_as(crop)).sum().backward()
    _check_gradient(x.grad, astronaut_faces.boxes[0])


def test_identity_embedding_gradient_reaches_the_face_only(
    astronaut, astronaut_faces, dlib_embedder, to_tensor
):
    x = to_tensor(astronaut).requires_grad_(True)
    emb = dlib_embedder.embed(to_grayscale(crop_faces(x, astronaut_faces.landmarks5)))
    assert emb.shape == (1, 128)
    reference = torch.zeros_like(emb)
    reference[0, 0] = 1.0
    (emb - reference).pow(2).sum().backward()
    _check_gradient(x.grad, astronaut_faces.boxes[0])


def _check_gradient(grad: torch.Tensor, box: torch.Tensor) -> None:
    x0, y0, x1, y1 = (int(v) for v in box.tolist())
    mag = grad.abs().sum(1)[0]
    assert mag[y0:y1, x0:x1].sum() > 0
    assert (mag[y0:y1, x0:x1] > 0).float().mean() > 0.5
    # Far outside the face box (beyond the chip's padding) the gradient is exactly zero.
    w, h = x1 - x0, y1 - y0
    far = torch.ones_like(mag, dtype=torch.bool)
    far[max(0, y0 - h) : y1 + h, max(0, x0 - w) : x1 + w] = False
    assert far.any() and (mag[far] == 0).all()


def test_to_grayscale(astronaut, to_tensor):
    x = to_tensor(astronaut)
    g = to_grayscale(x)
    assert g.shape == x.shape
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    pil = torch.from_numpy(np.array(astronaut.convert("L"), dtype=np.float32) / 255.0)
    assert (g[0, 0] - pil).abs().max() <= 1.0 / 255 + 1e-6  # PIL's L is BT.601 too
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert torch.allclose(to_grayscale(red), torch.full((3, 1, 1), 0.299))
    with pytest.raises(ValueError):
        to_grayscale(torch.zeros(1, 4, 2, 2))


def test_reduce_landmarks_68_to_template_points():
    lm = torch.arange(68 * 2, dtype=torch.float32).view(1, 68, 2)
    arc = reduce_landmarks(lm, "arcface")
    assert arc.shape == (1, 5, 2)
    assert torch.allclose(arc[0, 0], lm[0, 36:42].mean(0))
    assert torch.equal(arc[0, 2], lm[0, 30])
    assert reduce_landmarks(lm[:, list(DLIB_5_FROM_68)], "arcface").shape == (1, 5, 2)
    assert reduce_landmarks(lm, "dlib").shape == (1, 33, 2)  # dlib's mean-face subset
