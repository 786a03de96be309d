"""FPGA trainer: each stage with Clone Face Tuning on, interrupted and resumed == uninterrupted;
the exported pipeline reloads and generates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from instantportrait.cli import main

pytest.importorskip("dlib")


def _train(portrait_dir, out, stage, steps, resume=None):
    args = ["train", "fpga", "--stage", stage] + (["--resume", resume] if resume else [])
    for s in (
        f"data.path={portrait_dir}",
        "model.pretrained=tiny",
        "model.face_embedder=dlib",
        "data.resolution=64",
        f"training.max_steps={steps}",
        "training.batch_size=2",
        f"training.output_dir={out}",
        "training.mixed_precision=no",
        "training.num_workers=0",
        "training.tensorboard=false",
        "training.checkpoint_every=2",
        "training.log_every=1",
        "training.validate_every=0",
        "cft.every=2",
        'cft.stages=["landmark", "skeleton", "both"]',
    ):
        args += ["--set", s]
    assert main(args) == 0


def _weights(final):
    sd = load_file(str(final / "controlnet" / "diffusion_pytorch_model.safetensors"))
    sd.update(load_file(str(final / "resampler" / "diffusion_pytorch_model.safetensors")))
    return sd


def _column(run, name):
    rows = (run / "metrics.csv").read_text().splitlines()
    i = rows[0].split(",").index(name)
    return [float(r.split(",")[i]) for r in rows[1:]]


@pytest.mark.parametrize("stage", ["landmark", "skeleton", "both"])
def test_stage_with_cft_interrupted_and_resumed_matches_uninterrupted(
    stage, portrait_dir, tmp_path
):
    one, two = tmp_path / "one", tmp_path / "two"
    _train(portrait_dir, one, stage, 3)
    _train(portrait_dir, two, stage, 2)  # stopped after the step-2 checkpoint
    _train(portrait_dir, two, stage, 3, resume="latest")
    a, b = _weights(one / "final"), _weights(two / "final")
    assert a.keys() == b.keys() and any(".processor.to_k_id." in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    assert _column(one, "cft") == [1.0, 0.0, 1.0]  # steps 0 and 2 are CFT iterations
    l_cfa = _column(one, "l_cfa")
    assert l_cfa[0] > 0 and l_cfa[1] == 0 and l_cfa[2] > 0
    assert _column(two, "loss")[-1] == _column(one, "loss")[-1]
    assert json.loads((one / "config.json").read_text())["stage"] == stage
    if stage == "both":  # the exported model reloads and generates (one identity, one step)
        from PIL import Image

        from instantportrait.pipelines.fpga import FPGAPipeline

        pipe = FPGAPipeline.from_pretrained(str(one / "final"))
        pipe.set_progress_bar_config(disable=True)
        face = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        f_id = pipe.encode_face_crops(face)
        assert f_id.shape == (1, 4, 32)
        cond = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
        out = pipe("a person", cond, id_embeds=f_id, num_inference_steps=1, output_type="np")
        assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


def test_cft_changes_the_gradient_and_is_off_outside_its_stages(portrait_dir, tmp_path):
    """With CFT only in stage 'both', a landmark run never takes the clone iteration."""
    from instantportrait.cli.train import resolve
    from instantportrait.training.fpga import FPGATrainer

    cfg, _ = resolve(
        "fpga",
        None,
        [
            f"data.path={portrait_dir}",
            "model.pretrained=tiny",
            "model.face_embedder=dlib",
            "data.resolution=64",
            f"training.output_dir={tmp_path}",
            "training.mixed_precision=no",
            "stage=landmark",
            "training.tensorboard=false",
        ],  # fmt: skip
    )
    trainer = FPGATrainer(cfg)
    trainer.setup()
    assert cfg.cft.stages == ["both"] and cfg.cft.every == 10 and cfg.cft.lambda_cfa == 0.2
    assert cfg.data.dropout_text == 0.1 and cfg.optim.lr == 1e-4
    assert not trainer.cft_now()
    trainer.cfg.stage = "both"
    assert trainer.cft_now()  # step 0 of stage 'both'
    batch = trainer.collate([trainer.dataset[(0, 0)], trainer.dataset[(0, 1)]])
    g = torch.Generator().manual_seed(0)
    terms = trainer.compute_loss(batch, g, cft=True)
    torch.testing.assert_close(terms["loss"], terms["l_cldm"] + 0.2 * terms["l_cfa"])
    assert float(terms["l_cfa"].detach()) > 0
    terms["l_cfa"].backward()
    model = trainer.accelerator.unwrap_model(trainer.model)
    grads = [p.grad for p in model.controlnet.id_parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # L_cfa trains the ID projections
    assert all(p.grad is None for p in trainer.unet.parameters())  # the UNet stays frozen


def test_stage_all_dry_run_chains_the_three_stages(portrait_dir, tmp_path, capsys):
    args = ["train", "fpga", "--stage", "all", "--dry-run", "--set", f"data.path={portrait_dir}",
            "--set", f"training.output_dir={tmp_path}",
            "--set", "model.pretrained=tiny"]  # fmt: skip
    assert main(args) == 0
    stages = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in stages] == ["landmark", "skeleton", "both"]
    assert [s["training"]["max_steps"] for s in stages] == [50_000, 100_000, 1_000_000]
    assert [s["training"]["output_dir"] for s in stages] == [
        str(tmp_path / n) for n in ("landmark", "skeleton", "both")
    ]
    assert stages[0]["model"]["pretrained"] == "tiny"
    assert stages[1]["model"]["pretrained"] == str(tmp_path / "landmark" / "final")
    assert stages[2]["model"]["pretrained"] == str(tmp_path / "skeleton" / "final")
    assert stages[2]["cft"] == {**stages[2]["cft"], "every": 10, "lambda_cfa": 0.2}
