"""IDE-Net's trainer: eq. 5 against a hand computation, gradient paths, CLI smoke + exact resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from torch import nn

from instantportrait.cli import main
from instantportrait.faces.base import IdentityEmbedder
from instantportrait.training.config import from_dict
from instantportrait.training.idenet import IDENetConfig, IDENetTrainer, latent_face_windows
from instantportrait.training.logger import read_metrics
from instantportrait.training.loop import step_generator
from launching import launch


class SmallEmbedder(IdentityEmbedder):
    """A small random identity network (32x32 dlib-template crops) for fast gradient tests."""

    template, input_size, embedding_dim = "dlib", 32, 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 16),
        )

    def forward(self, crops):
        return self.net(crops)


class SmallIDENet(IDENetTrainer):
    def build_embedder(self):
        return SmallEmbedder().to(self.device)


def config(pair_dir, tmp_path, **loss) -> IDENetConfig:
    return from_dict(
        IDENetConfig,
        {
            "model": {"pretrained": "tiny"},
            "data": {
                "path": str(pair_dir),
                "resolution": 64,
                "dropout_text": 0.0,
                "dropout_image": 0.0,
                "dropout_both": 0.0,
                "detect_faces": False,
            },
            "loss": loss,
            "training": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 2,
                "batch_size": 2,
                "tensorboard": False,
            },
        },
    )


def setup_trainer(pair_dir, tmp_path, **loss) -> SmallIDENet:
    trainer = SmallIDENet(config(pair_dir, tmp_path, **loss))
    trainer.setup()
    return trainer


def batch_of(trainer, n=2):
    if trainer.dataset.source[0].landmarks is None:
        pytest.skip("dlib not installed: the test dataset has no landmarks")
    return trainer.collate([trainer.dataset[(0, i)] for i in range(n)])


def test_lambda_zero_is_the_plain_instruct_pix2pix_loss(pair_dir, tmp_path):
    trainer = setup_trainer(pair_dir, tmp_path, lambda_aid=0.0)
    batch = batch_of(trainer)
    terms = trainer.compute_loss(batch, step_generator(0, 0, 0, trainer.device))
    # by hand, with the same draws in the same order
    g = step_generator(0, 0, 0, trainer.device)
    with torch.no_grad():
        sf = trainer.vae.config.scaling_factor
        z0 = trainer.vae.encode(batch["target"]).latent_dist.sample(generator=g) * sf
        cond = trainer.vae.encode(batch["input"]).latent_dist.mode()
        text = trainer.encode_text(batch["instruction"])
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        ab = trainer.train_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        eps = trainer.model(torch.cat([z_t, cond], 1), t, encoder_hidden_states=text).sample
        expected = ((eps - noise) ** 2).mean()
    torch.testing.assert_close(terms["loss"].detach(), expected, rtol=1e-5, atol=1e-6)
    assert terms["l_aid"].item() == 0.0


def test_identity_gradient_reaches_unet_not_embedder_or_vae(pair_dir, tmp_path):
    trainer = setup_trainer(pair_dir, tmp_path, lambda_aid=0.7, weighting="constant")
    batch = batch_of(trainer)
    terms = trainer.compute_loss(batch, step_generator(0, 1, 0, trainer.device))
    assert terms["l_aid"].item() > 0
    terms["l_aid"].backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in trainer.embedder.parameters())
    assert all(p.grad is None for p in trainer.vae.parameters())
    # and the total is eq. 5
    torch.testing.assert_close(terms["loss"], terms["l_dm"] + 0.7 * terms["l_aid"])


def test_face_window_decodes_a_window_and_still_sends_gradients(pair_dir, tmp_path):
    trainer = setup_trainer(pair_dir, tmp_path, lambda_aid=0.7, face_window=True, window_margin=0.5)
    batch = batch_of(trainer)
    terms = trainer.compute_loss(batch, step_generator(0, 1, 0, trainer.device))
    terms["l_aid"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    corners, w, h = latent_face_windows(batch["landmarks"], (8, 8), 8, 0.5)
    assert w <= 8 and h <= 8 and (corners >= 0).all() and (corners[:, 0] + w <= 8).all()


def hand_weight(t: int, kind: str, t_max: float, a=1.0, b=0.0, alpha=1.0) -> float:
    """W_a(t, T_max) of InstantPortrait eq. 4 / Table 5, written out on Python floats."""
    r = t / t_max
    return {
        "linear": r,
        "linear_offset": a * r + b,
        "cosine": 0.5 * alpha * (1 + math.cos(math.pi * r)) + 1 - alpha,
    }[kind]


@pytest.mark.parametrize(
    "loss",
    [
        {"weighting": "linear"},
        {"weighting": "linear", "t_max": 500},
        {"weighting": "linear_offset", "a": 0.5, "b": 0.25},
        {"weighting": "cosine", "alpha": 0.5},
    ],
)
def test_identity_term_weights_each_row_by_its_own_timestep(pair_dir, tmp_path, monkeypatch, loss):
    """L_aid = mean over the face rows of W_a(t_i) * d_i, with t_i the timestep the UNet saw for
    row i and d_i that row's identity distance: a weight of 1, another row's t, the batch's
    first rows' t or another T_max each give a different value."""
    import instantportrait.training.idenet as idenet

    trainer = setup_trainer(pair_dir, tmp_path, lambda_aid=0.7, **loss)
    batch = batch_of(trainer, 3)
    batch["has_face"] = torch.tensor([True, False, True])  # the middle row has no face crop
    seen_t, seen_d = [], []
    trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_t.append(args[1].detach().clone()), with_kwargs=True
    )
    real_distance = idenet.identity_distance

    def spy_distance(reference, predicted):
        d = real_distance(reference, predicted)
        seen_d.append(d.detach().clone())
        return d

    monkeypatch.setattr(idenet, "identity_distance", spy_distance)
    for micro_step in range(50):  # a draw whose face rows have clearly different timesteps
        seen_t.clear(), seen_d.clear()
        terms = trainer.compute_loss(batch, step_generator(0, micro_step, 0, trainer.device))
        t0, t2 = int(seen_t[0][0]), int(seen_t[0][2])
        if abs(t0 - t2) > 200:
            break
    (t,), (d,) = seen_t, seen_d
    assert d.shape == (2,) and abs(float(d[0]) - float(d[1])) > 1e-3 * float(d.abs().max())
    t_max = float(loss.get("t_max", 999))
    kw = {k: loss[k] for k in ("a", "b", "alpha") if k in loss}
    w = [hand_weight(int(t[i]), loss["weighting"], t_max, **kw) for i in (0, 2)]
    expected = (w[0] * float(d[0]) + w[1] * float(d[1])) / 2
    assert terms["l_aid"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["w_a"].item() == pytest.approx((w[0] + w[1]) / 2, rel=1e-5)  # logged
    # the value tells the wrong weightings apart
    swapped = (w[1] * float(d[0]) + w[0] * float(d[1])) / 2
    first_rows = [hand_weight(int(t[i]), loss["weighting"], t_max, **kw) for i in (0, 1)]
    for wrong in (
        float(d.mean()),  # W_a replaced by 1
        swapped,  # each row weighted by the other's t
        (first_rows[0] * float(d[0]) + first_rows[1] * float(d[1])) / 2,  # t[:2], not the rows
    ):
        assert abs(wrong - expected) > 1e-3 * abs(expected)
    torch.testing.assert_close(terms["loss"], terms["l_dm"] + 0.7 * terms["l_aid"])


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


TRAIN = [
    "train",
    "idenet",
    "--set",
    "model.pretrained=tiny",
    "--set",
    "data.resolution=64",
    "--set",
    "training.batch_size=2",
    "--set",
    "training.checkpoint_every=3",
    "--set",
    "training.validate_every=3",
    "--set",
    "validation.steps=2",
    "--set",
    "validation.resolution=64",
    "--set",
    "validation.count=2",
    "--set",
    "training.tensorboard=false",
    "--set",
    "training.log_every=1",
    "--set",
    "training.mixed_precision=no",
    "--set",
    "training.gradient_checkpointing=false",
    "--set",
    "training.ema=true",
    "--set",
    "training.ema_decay=0.9",
    "--set",
    "training.num_workers=0",
    "--set",
    "training.gradient_accumulation_steps=1",
    "--set",
    "optim.warmup_steps=2",
]


def test_cli_dry_run_and_bad_config(pair_dir, tmp_path, capsys):
    code, out = run_cli([*TRAIN, "--set", f"data.path={pair_dir}", "--dry-run"], capsys)
    assert code == 0
    resolved = json.loads(out.out)
    assert resolved["loss"]["lambda_aid"] == 0.7 and resolved["data"]["resolution"] == 64
    code, out = run_cli(
        [*TRAIN, "--set", f"data.path={pair_dir}", "--set", "loss.lambda=1", "--dry-run"], capsys
    )
    assert code == 2 and "loss.lambda: unknown setting" in out.err
    code, out = run_cli(
        [
            *TRAIN,
            "--set",
            f"data.path={pair_dir}",
            "--set",
            "loss.weighting=quadratic",
            "--dry-run",
        ],
        capsys,
    )
    assert code == 2 and "loss.weighting" in out.err


def test_cli_smoke_with_exact_resume(pair_dir, tmp_path, capsys, astronaut_path):
    pytest.importorskip("dlib")
    common = [*TRAIN, "--set", f"data.path={pair_dir}", "--set", "loss.embedder=dlib"]
    one = tmp_path / "one"
    code, out = run_cli(
        [*common, "--set", f"training.output_dir={one}", "--set", "training.max_steps=6"], capsys
    )
    assert code == 0, out.err
    two = tmp_path / "two"
    code, out = run_cli(
        [*common, "--set", f"training.output_dir={two}", "--set", "training.max_steps=3"], capsys
    )
    assert code == 0, out.err
    code, out = run_cli(
        [
            *common,
            "--set",
            f"training.output_dir={two}",
            "--set",
            "training.max_steps=6",
            "--resume",
            "latest",
        ],
        capsys,
    )
    assert code == 0, out.err
    a = [r for r in read_metrics(one) if "loss" in r]
    b = [r for r in read_metrics(two) if "loss" in r]
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "l_dm", "l_cid", "l_aid", "w_a"):
            assert ra.get(key) == rb.get(key), (key, ra["step"])
    assert any(r.get("l_cid", 0) > 0 for r in a)  # the identity term ran
    ckpts = sorted(p.name for p in (one / "checkpoints").iterdir())
    assert ckpts == ["step-000003", "step-000006"]
    assert (one / "validation" / "step-000003.png").is_file()
    assert json.loads((one / "config.json").read_text())["training"]["max_steps"] == 6
    # the saved pipeline loads and edits
    final = one / "final"
    code, out = run_cli(
        [
            "edit",
            astronaut_path,
            "--prompt",
            "as a sepia photograph",
            "--model",
            final,
            "--steps",
            2,
            "--resolution",
            64,
            "-o",
            tmp_path / "edits",
        ],
        capsys,
    )
    assert code == 0, out.err
    assert json.loads((final / "model_index.json").read_text())["recommended_steps"] == 20


def test_training_stops_with_a_line_naming_a_corrupt_row(pair_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(pair_dir, bad)
    for name in ("000.png", "001.png", "002.png", "003.png"):
        (bad / "inputs" / name).write_bytes(b"broken")
    code, out = run_cli(
        [
            *TRAIN,
            "--set",
            f"data.path={bad}",
            "--set",
            "loss.lambda_aid=0",
            "--set",
            f"training.output_dir={tmp_path / 'r'}",
            "--set",
            "training.max_steps=1",
        ],
        capsys,
    )
    assert code == 2
    errors = [ln for ln in out.err.replace("\r", "\n").splitlines() if "error:" in ln]
    assert len(errors) == 1 and "pairs.jsonl:" in errors[0] and "not an image" in errors[0]


@pytest.mark.slow  # test_run_policy.py's 2-process resume test is the unmarked representative
@pytest.mark.multiprocess
def test_two_processes_under_accelerate_launch(pair_dir, tmp_path):
    launch(
        [
            *TRAIN,
            "--set",
            f"data.path={pair_dir}",
            "--set",
            "loss.lambda_aid=0",
            "--set",
            "training.batch_size=1",
            "--set",
            "training.validate_every=0",
            "--set",
            f"training.output_dir={tmp_path / 'ddp'}",
            "--set",
            "training.max_steps=3",
        ]
    )
    assert [r["step"] for r in read_metrics(tmp_path / "ddp") if "loss" in r] == [1, 2, 3]
    assert (tmp_path / "ddp" / "final" / "model_index.json").is_file()
