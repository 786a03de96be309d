"""IPNet distillation: eqs. 6-13 against hand computations, the re-noising rule, the stages."""

from __future__ import annotations

import json

import pytest
import torch

from instantportrait.cli import main
from instantportrait.cli.train import resolve
from instantportrait.losses.adversarial import hinge_discriminator_loss, hinge_generator_loss
from instantportrait.losses.distillation import ddim_inversion, renoise_epsilon
from instantportrait.losses.triplet import face_style_triplet_loss
from instantportrait.parameterization import add_noise, alpha_bar, predict_epsilon
from instantportrait.training.config import from_dict
from instantportrait.training.ipnet import IPNetConfig, IPNetTrainer
from instantportrait.training.logger import read_metrics
from instantportrait.training.loop import step_generator


def test_hinge_losses_by_hand():
    real = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    fake = torch.tensor([[-2.0, 0.5], [0.0, -0.5]])
    # E[max(0, 1 - real)] = (0 + 0.5 + 2 + 0) / 4; E[max(0, 1 + fake)] = (0 + 1.5 + 1 + 0.5) / 4
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(2.5 / 4 + 3.0 / 4)
    assert hinge_generator_loss(fake).item() == pytest.approx(-(-2.0 + 0.5 + 0.0 - 0.5) / 4)


def test_triplet_loss_by_hand():
    f_in = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    f_out = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    f_tg = torch.tensor([[3.0, 4.5], [1.0, 2.0]])
    # sample 0: d1 = 5, d2 = 0.5 -> max(0.5 - 5 - 0.15, 0) = 0; sample 1: d1 = 0, d2 = 2 -> 1.85
    assert face_style_triplet_loss(f_in, f_out, f_tg, 0.15).item() == pytest.approx(1.85 / 2)
    valid = torch.tensor([True, False])
    assert face_style_triplet_loss(f_in, f_out, f_tg, 0.15, valid).item() == 0.0


def test_renoise_rule_and_one_step_ddim_inversion_is_eq9():
    rand, inv = torch.zeros(3, 4, 2, 2), torch.ones(3, 4, 2, 2)
    t = torch.tensor([150, 200, 201])
    chosen = renoise_epsilon(rand, inv, t, tau=200)
    assert chosen[:, 0, 0, 0].tolist() == [1.0, 1.0, 0.0]  # inversion exactly for t <= tau

    from diffusers import DDPMScheduler

    ac = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).alphas_cumprod
    torch.manual_seed(0)
    w = torch.randn(4, 4)

    def teacher(z, tt):  # a fixed, timestep-dependent fake epsilon predictor
        return torch.einsum("ij,bjhw->bihw", w, z) * (1 + tt.view(-1, 1, 1, 1) / 1000)

    z0, tt = torch.randn(2, 4, 3, 3), torch.tensor([180, 120])
    ab = alpha_bar(ac, tt, z0)
    eq9 = add_noise(z0, predict_epsilon(teacher(z0, tt), z0, ab, "epsilon"), ab)
    torch.testing.assert_close(ddim_inversion(teacher, z0, tt, ac, "epsilon", num_steps=1), eq9)
    multi = ddim_inversion(teacher, z0, tt, ac, "epsilon", num_steps=4)
    assert multi.shape == z0.shape and not torch.allclose(multi, eq9)


def make_config(pair_dir, teacher_dir, tmp_path, **stage):
    return from_dict(
        IPNetConfig,
        {
            "teacher": {"path": str(teacher_dir)},
            "stage": {"name": "test", "t_min": 100, "t_max": 300, "lambda_triplet": 1.0, **stage},
            "discriminator": {"backbone": "tiny"},
            "triplet": {"dino": "tiny"},
            "data": {"path": str(pair_dir), "resolution": 64, "detect_faces": False},
            "training": {
                "output_dir": str(tmp_path / "run"),
                "batch_size": 4,
                "max_steps": 1,
                "tensorboard": False,
            },
        },
    )


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_components):
    from instantportrait.pipelines import InstantPortraitPipeline

    path = tmp_path_factory.mktemp("teacher") / "idenet"
    InstantPortraitPipeline(**tiny_components).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trainer(pair_dir, teacher_dir, tmp_path_factory):
    t = IPNetTrainer(make_config(pair_dir, teacher_dir, tmp_path_factory.mktemp("ipnet")))
    t.setup()
    return t


def test_distillation_uses_inversion_exactly_for_small_t(trainer, monkeypatch):
    calls = []

    def fake_teacher(z_t, t, image_latents, cond, uncond):
        calls.append((z_t.clone(), t.clone()))
        return 0.5 * z_t + 0.01 * t.view(-1, 1, 1, 1).float()

    monkeypatch.setattr(trainer, "teacher_output", fake_teacher)
    z_hat = torch.randn(4, 4, 8, 8)
    lat = torch.zeros(4, 4, 8, 8)
    text = torch.zeros(4, 77, 32)
    out = None
    for seed in range(20):  # find draws with t on both sides of tau
        calls.clear()
        out = trainer.distillation_target(
            z_hat, lat, text, text, torch.Generator().manual_seed(seed)
        )
        small = out["t"] <= 200
        if small.any() and (~small).any():
            break
    assert small.any() and (~small).any()
    t = out["t"]
    inv_z, inv_t = calls[0]  # 1st call: the teacher at the clean latent, only where t <= tau
    assert torch.equal(inv_t, t[small]) and torch.equal(inv_z, z_hat[small])
    z_t, seen_t = calls[1]  # 2nd call: the whole batch at z_t'
    assert torch.equal(seen_t, t)
    ab = alpha_bar(trainer.alphas_cumprod, t, z_hat)
    eps_teacher = predict_epsilon(
        0.5 * z_hat + 0.01 * t.view(-1, 1, 1, 1).float(), z_hat, ab, "epsilon"
    )
    expected_inv = add_noise(z_hat, eps_teacher, ab)
    torch.testing.assert_close(z_t[small], expected_inv[small])
    noise_part = (z_t[~small] - ab[~small].sqrt() * z_hat[~small]) / (1 - ab[~small]).sqrt()
    assert not torch.allclose(noise_part, eps_teacher[~small])  # random noise there
    assert abs(noise_part.std().item() - 1.0) < 0.35
    assert not out["latent"].requires_grad and out["inversion_fraction"] == small.float().mean()


def test_no_gradient_reaches_the_teacher_and_the_student_learns(trainer):
    batch = trainer.collate([trainer.dataset[(0, i)] for i in range(4)])
    losses = trainer.compute_losses(batch, step_generator(0, 0, 0, trainer.device))
    for name in ("l_adv", "l_distill", "l_triplet", "loss_g"):
        assert torch.isfinite(losses[name]), name
    losses["loss_g"].backward()
    assert all(p.grad is None for p in trainer.teacher.unet.parameters())
    assert all(p.grad is None for p in trainer.vae.parameters())
    assert all(p.grad is None for p in trainer.disc.heads.parameters())  # frozen in the G step
    assert (
        sum(float(p.grad.abs().sum()) for p in trainer.model.parameters() if p.grad is not None) > 0
    )
    trainer.optimizer.zero_grad(set_to_none=True)


def test_discriminator_only_sees_crops_of_the_configured_size(trainer):
    seen = []
    emb = trainer.disc.backbone.embeddings
    handle = emb.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    try:
        logits = trainer.disc(
            torch.rand(3, 3, 64, 48) * 2 - 1, generator=torch.Generator().manual_seed(0)
        )
        trainer.disc(torch.rand(2, 3, 16, 16) * 2 - 1)  # smaller than a crop: resized up first
    finally:
        handle.remove()
    assert seen == [(3, 3, 32, 32), (2, 3, 32, 32)]
    assert logits.shape[0] == 3 and logits.ndim == 2


@pytest.mark.parametrize(
    ("stage", "t_range", "lambdas", "global_batch", "steps", "inversion_everywhere"),
    [
        ("high", (400, 800), (1.0, 0.0), 256, 25000, False),
        ("middle", (200, 400), (0.3, 0.0), 256, 15000, False),
        ("low", (150, 200), (0.3, 1.0), 2048, 1000, True),
    ],
)
def test_stage_configs_are_table_6(
    stage, t_range, lambdas, global_batch, steps, inversion_everywhere
):
    cfg, _ = resolve("ipnet", None, ["data.path=x"], stage, "teacher")
    st, tr = cfg.stage, cfg.training
    assert (st.t_min, st.t_max) == t_range and (st.lambda_distill, st.lambda_triplet) == lambdas
    assert tr.batch_size * tr.gradient_accumulation_steps == global_batch and tr.max_steps == steps
    assert st.tau == 200 and st.lambda_adv == 1.0 and cfg.triplet.margin == 0.15
    assert (st.t_max <= st.tau) == inversion_everywhere  # low: DDIM-inversion distillation only


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def test_three_stages_through_the_cli_with_exact_resume(
    pair_dir, teacher_dir, tmp_path, capsys, astronaut_path
):
    common = [
        "train",
        "ipnet",
        "--teacher",
        teacher_dir,
        "--set",
        f"data.path={pair_dir}",
        "--set",
        "data.resolution=64",
        "--set",
        "data.detect_faces=false",
        "--set",
        "discriminator.backbone=tiny",
        "--set",
        "triplet.dino=tiny",
        "--set",
        "training.batch_size=2",
        "--set",
        "training.gradient_accumulation_steps=1",
        "--set",
        "training.tensorboard=false",
        "--set",
        "training.mixed_precision=no",
        "--set",
        "training.gradient_checkpointing=false",
        "--set",
        "training.log_every=1",
        "--set",
        "training.validate_every=0",
        "--set",
        "training.checkpoint_every=2",
        "--set",
        "training.num_workers=0",
    ]
    # exact resume inside a stage: 4 steps at once vs 2 + resume + 2
    one, two = tmp_path / "one", tmp_path / "two"
    assert (
        run_cli(
            [
                *common,
                "--stage",
                "low",
                "--set",
                f"training.output_dir={one}",
                "--set",
                "training.max_steps=4",
            ],
            capsys,
        )[0]
        == 0
    )
    assert (
        run_cli(
            [
                *common,
                "--stage",
                "low",
                "--set",
                f"training.output_dir={two}",
                "--set",
                "training.max_steps=2",
            ],
            capsys,
        )[0]
        == 0
    )
    assert (
        run_cli(
            [
                *common,
                "--stage",
                "low",
                "--set",
                f"training.output_dir={two}",
                "--set",
                "training.max_steps=4",
                "--resume",
                "latest",
            ],
            capsys,
        )[0]
        == 0
    )
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [1, 2, 3, 4] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss_g", "l_adv", "l_distill", "loss_d", "inversion_fraction"):
            assert ra[key] == rb[key], (key, ra["step"])
    assert all(r["inversion_fraction"] == 1.0 for r in a)  # low stage: t <= tau always
    # all three stages, each from the previous student
    run_all = tmp_path / "all"
    code, out = run_cli(
        [
            *common,
            "--stage",
            "all",
            "--set",
            f"training.output_dir={run_all}",
            "--set",
            "training.max_steps=1",
        ],
        capsys,
    )
    assert code == 0, out.err
    meta = json.loads((run_all / "final" / "instantportrait.json").read_text())
    assert [s["stage"] for s in meta["stages"]] == ["high", "middle", "low"]
    assert meta["unet_parameters"] > 0
    index = json.loads((run_all / "final" / "model_index.json").read_text())
    assert index["recommended_steps"] == 1
    code, out = run_cli(
        [
            "edit",
            astronaut_path,
            "--prompt",
            "as a sepia photograph",
            "--model",
            run_all / "final",
            "--resolution",
            64,
            "-o",
            tmp_path / "e",
        ],
        capsys,
    )
    assert code == 0, out.err
    code, out = run_cli(
        [
            "edit",
            astronaut_path,
            "--prompt",
            "pixar style",
            "--model",
            run_all / "final",
            "--resolution",
            64,
            "--iterations",
            2,
            "-o",
            tmp_path / "boost",
        ],
        capsys,
    )
    assert code == 0, out.err
