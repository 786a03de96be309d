"""Trainer-level role and sign checks: each loss term gets the right tensors, in the right
places, with the right sign; mixed face/no-face batches. Expectations are computed here from
the recorded inputs, not by calling the code under test's formula."""

from __future__ import annotations

import copy

import pytest
import torch
from test_idenet import batch_of, setup_trainer  # tests/training is on sys.path

from instantportrait.faces.align import crop_faces, to_grayscale
from instantportrait.training.config import from_dict
from instantportrait.training.ipnet import IPNetConfig, IPNetTrainer
from instantportrait.training.loop import step_generator


def mixed(batch):
    """Row 1 of a batch loses its face (all-zero landmarks, has_face False)."""
    batch = dict(batch)
    batch["landmarks"] = batch["landmarks"].clone()
    batch["landmarks"][1] = 0
    batch["has_face"] = torch.tensor([True, False, *batch["has_face"][2:].tolist()])
    return batch


# ---- IDE-Net ---------------------------------------------------------------------------
def record_embedder(trainer, monkeypatch):
    seen = []
    original = trainer.embedder.embed

    def spy(crops):
        seen.append(crops)
        return original(crops)

    monkeypatch.setattr(trainer.embedder, "embed", spy)
    return seen


def test_idenet_identity_term_compares_the_input_with_the_prediction(
    pair_dir, tmp_path, monkeypatch
):
    trainer = setup_trainer(pair_dir, tmp_path, lambda_aid=0.7, weighting="constant")
    batch = batch_of(trainer)
    seen = record_embedder(trainer, monkeypatch)
    terms = trainer.compute_loss(batch, step_generator(0, 1, 0, trainer.device))
    assert len(seen) == 2
    ref, hat = seen
    emb = trainer.embedder

    def crops_of(images):
        x = (images / 2 + 0.5).clamp(0, 1)
        return to_grayscale(crop_faces(x, batch["landmarks"], emb.template, emb.input_size))

    torch.testing.assert_close(ref, crops_of(batch["input"]))  # the reference is c_I
    assert not torch.allclose(ref, crops_of(batch["target"]), atol=1e-3)  # not the target
    assert hat.requires_grad and not ref.requires_grad  # the prediction carries the gradient
    # L_cid = || E(ref) - E(hat) ||^2 per sample, W_a = 1 here
    e_ref, e_hat = torch.nn.functional.normalize(emb(ref), dim=-1), emb.embed(hat)
    by_hand = sum(float(((a - b) ** 2).sum().detach()) for a, b in zip(e_ref, e_hat)) / len(e_ref)
    assert terms["l_aid"].item() == pytest.approx(by_hand, rel=1e-4)


def test_idenet_mixed_batch_embeds_only_rows_with_a_face(pair_dir, tmp_path, monkeypatch):
    trainer = setup_trainer(pair_dir, tmp_path, lambda_aid=0.7, face_window=True)
    batch = mixed(batch_of(trainer))
    seen = record_embedder(trainer, monkeypatch)
    terms = trainer.compute_loss(batch, step_generator(0, 2, 0, trainer.device))
    assert [c.shape[0] for c in seen] == [1, 1]  # row 0 only
    assert all(torch.isfinite(v).all() for v in terms.values())
    assert terms["face_fraction"].item() == 0.5
    terms["loss"].backward()
    assert all(
        torch.isfinite(p.grad).all() for p in trainer.model.parameters() if p.grad is not None
    )


# ---- IPNet -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ipnet(pair_dir, tmp_path_factory, tiny_components):
    from instantportrait.pipelines import InstantPortraitPipeline

    teacher = tmp_path_factory.mktemp("teacher") / "idenet"
    InstantPortraitPipeline(**tiny_components).save_pretrained(teacher)
    cfg = from_dict(
        IPNetConfig,
        {
            "teacher": {"path": str(teacher)},
            "stage": {"name": "t", "t_min": 100, "t_max": 300, "lambda_triplet": 1.0},
            "discriminator": {"backbone": "tiny", "lr": 1e-3},
            "triplet": {"dino": "tiny", "margin": 0.01},
            "data": {"path": str(pair_dir), "resolution": 64, "detect_faces": False},
            "training": {
                "output_dir": str(tmp_path_factory.mktemp("ipnet") / "run"),
                "batch_size": 2,
                "max_steps": 1,
                "tensorboard": False,
            },
        },
    )
    trainer = IPNetTrainer(cfg)
    trainer.setup()
    return trainer


def ipnet_batch(trainer):
    if trainer.dataset.source[0].landmarks is None:
        pytest.skip("dlib not installed: the test dataset has no landmarks")
    return trainer.collate([trainer.dataset[(0, i)] for i in range(2)])


def record_features(trainer, monkeypatch):
    seen = []
    original = trainer.face_features

    def spy(images, landmarks, points="dlib"):
        f = original(images, landmarks, points)
        seen.append((images, f))
        return f

    monkeypatch.setattr(trainer, "face_features", spy)
    return seen


@pytest.mark.parametrize("mixed_batch", [False, True])
def test_ipnet_triplet_roles_and_normalised_features(ipnet, monkeypatch, mixed_batch):
    batch = ipnet_batch(ipnet)
    batch = mixed(batch) if mixed_batch else batch
    rows = batch["has_face"].nonzero().flatten()
    seen = record_features(ipnet, monkeypatch)
    out = ipnet.compute_losses(batch, step_generator(0, 0, 0, ipnet.device))
    (x_in, f_in), (x_tg, f_tg), (x_out, f_out) = seen
    torch.testing.assert_close(x_in, batch["input"][rows])  # c_I
    torch.testing.assert_close(x_tg, batch["target"][rows])  # x, the target
    torch.testing.assert_close(x_out, out["x_hat"][rows])  # x_hat, the student's output
    assert x_out.requires_grad and not f_in.requires_grad and not f_tg.requires_grad
    for f in (f_in, f_tg, f_out):
        torch.testing.assert_close(f.norm(dim=-1), torch.ones(len(rows)))  # L2-normalised
    f_out = f_out.detach()
    d1 = [float((a - o).norm()) for a, o in zip(f_in, f_out)]  # output vs input
    d2 = [float((t - o).norm()) for t, o in zip(f_tg, f_out)]  # output vs target
    m = ipnet.cfg.triplet.margin
    by_hand = sum(max(b - a - m, 0.0) for a, b in zip(d1, d2)) / len(d1)
    assert out["l_triplet"].item() == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
    assert out["triplet_d1"].item() == pytest.approx(sum(d1) / len(d1), rel=1e-4)
    assert out["triplet_d2"].item() == pytest.approx(sum(d2) / len(d2), rel=1e-4)
    assert torch.isfinite(out["loss_g"])


def test_generator_adversarial_term_raises_the_fake_score(ipnet):
    """l_adv = -E[D(x_hat)], and one small gradient step on it makes D(x_hat) larger."""
    batch = ipnet_batch(ipnet)
    disc = ipnet.accelerator.unwrap_model(ipnet.disc)
    st = copy.copy(ipnet.cfg.stage)
    ipnet.cfg.stage.lambda_distill, ipnet.cfg.stage.lambda_triplet = 0.0, 0.0
    try:
        out = ipnet.compute_losses(batch, step_generator(0, 0, 0, ipnet.device))
        crops = torch.Generator().manual_seed(7)
        with torch.no_grad():
            before = disc(out["x_hat"], generator=crops).mean().item()
        # the sign, by recomputing D on the same crops compute_losses drew
        g = step_generator(0, 0, 0, ipnet.device)
        torch.randn(out["x_hat"].shape[0], 4, 8, 8, generator=g)  # the student's noise
        with torch.no_grad():
            expected = -disc(out["x_hat"], generator=g).mean().item()
        assert out["l_adv"].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        ipnet.model.zero_grad(set_to_none=True)
        out["l_adv"].backward()
        with torch.no_grad():
            for p in ipnet.model.parameters():
                if p.grad is not None:
                    p -= 1e-3 * p.grad  # plain gradient descent on l_adv
            after_out = ipnet.compute_losses(batch, step_generator(0, 0, 0, ipnet.device))
            after = disc(after_out["x_hat"], generator=torch.Generator().manual_seed(7))
        assert after.mean().item() > before
    finally:
        ipnet.cfg.stage = st
        ipnet.model.zero_grad(set_to_none=True)


def test_one_discriminator_update_separates_real_and_fake(ipnet):
    batch = ipnet_batch(ipnet)
    disc = ipnet.accelerator.unwrap_model(ipnet.disc)
    old_heads = copy.deepcopy(disc.heads)
    captured = {}
    original = ipnet.compute_losses

    def capture(b, g):
        out = original(b, g)
        captured.update(real=out["x_target"].detach(), fake=out["x_hat"].detach())
        return out

    ipnet.compute_losses = capture
    try:
        ipnet.training_step(batch, step_generator(0, 3, 0, ipnet.device))
    finally:
        del ipnet.compute_losses

    def scores(heads):
        kept = disc.heads
        disc.heads = heads
        try:
            with torch.no_grad():
                r = disc(captured["real"], generator=torch.Generator().manual_seed(1)).mean()
                f = disc(captured["fake"], generator=torch.Generator().manual_seed(1)).mean()
        finally:
            disc.heads = kept
        return r.item(), f.item()

    real0, fake0 = scores(old_heads)
    real1, fake1 = scores(disc.heads)
    # the scores of real (the target) and fake (the student's output) move apart, real above
    # (Adam's first step moves every weight by ~lr, so a shared bias can shift both a little)
    assert real1 - fake1 > real0 - fake0


def test_distillation_regresses_the_student_onto_the_teacher(ipnet, monkeypatch):
    """L_distill's first argument is the student's x_hat (with gradient), the second the
    teacher's decoded x_hat_theta (no gradient): swapped, the student would get no gradient."""
    import instantportrait.training.ipnet as module

    seen = []
    original = module.distillation_loss

    def spy(student, teacher):
        seen.append((student, teacher))
        return original(student, teacher)

    monkeypatch.setattr(module, "distillation_loss", spy)
    batch = ipnet_batch(ipnet)
    out = ipnet.compute_losses(batch, step_generator(0, 5, 0, ipnet.device))
    (student, teacher_target) = seen[0]
    assert student is out["x_hat"] and student.requires_grad
    assert not teacher_target.requires_grad and teacher_target.shape == student.shape
    by_hand = float(((student.detach() - teacher_target) ** 2).mean())
    assert out["l_distill"].item() == pytest.approx(by_hand, rel=1e-5)
