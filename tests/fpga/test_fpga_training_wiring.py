"""FPGA's trainer wiring: what it trains (spec §2.1: the ControlNet, its ID projections and the
resampler change after optimisation steps; the UNet, VAE, text encoder, CLIP vision tower and
face embedder stay bit-identical) and what Clone Face Tuning feeds the model (§2.4: the
spliced condition is the spliced image's own rendering)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("dlib")


def _trainer(portrait_dir, tmp_path, stage):
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
            "training.tensorboard=false",
            f"stage={stage}",
            "training.batch_size=2",
        ],  # fmt: skip
    )
    trainer = FPGATrainer(cfg)
    trainer.setup()
    return trainer


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_every_trainable_group_changes_and_every_frozen_one_stays(portrait_dir, tmp_path):
    trainer = _trainer(portrait_dir, tmp_path, "landmark")
    model = trainer.accelerator.unwrap_model(trainer.model)
    id_names = {n for n, _ in model.controlnet.named_parameters() if "_id." in n}
    assert id_names  # to_k_id / to_v_id of every ControlNet cross-attention
    trainable = {
        "resampler": model.resampler,
        "controlnet": model.controlnet,
    }
    frozen = {
        "unet": trainer.unet,
        "vae": trainer.vae,
        "text_encoder": trainer.text_encoder,
        "image_encoder": trainer.image_encoder,
    }
    if isinstance(trainer.face_embedder, torch.nn.Module):
        frozen["face_embedder"] = trainer.face_embedder
    before = {g: _snapshot(m) for g, m in {**trainable, **frozen}.items()}
    batch = trainer.collate([trainer.dataset[(0, i)] for i in range(2)])
    g = torch.Generator().manual_seed(0)
    # zero convolutions open one link per step: the output convs in step 1, the condition
    # embedding's conv_out in 2 (the output convs are no longer zero), its blocks in 3
    for _ in range(3):
        trainer.training_step(batch, g)
    for group, module in frozen.items():
        for n, p in module.named_parameters():
            assert torch.equal(p, before[group][n]), f"frozen {group}.{n} changed"
            assert not p.requires_grad, f"frozen {group}.{n} requires grad"
    for group, module in trainable.items():
        moved = {n for n, p in module.named_parameters() if not torch.equal(p, before[group][n])}
        still = sorted(set(before[group]) - moved)
        assert not still, f"{group}: {len(still)} parameters did not train: {still}"
    assert id_names <= {n for n, p in model.controlnet.named_parameters() if p.requires_grad}


def test_clone_face_tuning_splices_the_condition_with_the_image(
    portrait_dir, tmp_path, monkeypatch
):
    """Two faces at x = 20 and x = 40 of a 64-px sample: CFT's half-width crops start at
    x = 4 and x = 24 (face-centred), so the spliced image is [x[4:36] | x[4:36]] (and
    [x[24:56] | ...]) and the condition the ControlNet gets must be the landmark rendering
    of the spliced image's two faces, drawn afresh at their new places."""
    import numpy as np

    from instantportrait.conditions import render_condition
    from instantportrait.training.fpga import FPGATrainable

    trainer = _trainer(portrait_dir, tmp_path, "both")
    seen = {}
    forward = FPGATrainable.forward

    def spy(self, ident, tokens, z_t, t, text, cond, id_capture=None):
        seen["cond"] = cond.detach().clone()
        return forward(self, ident, tokens, z_t, t, text, cond, id_capture)

    encode = trainer.vae.encode

    def vae_spy(x, *a, **k):
        seen["image"] = x.detach().clone()
        return encode(x, *a, **k)

    monkeypatch.setattr(FPGATrainable, "forward", spy)
    monkeypatch.setattr(trainer.vae, "encode", vae_spy)

    def tensor(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)

    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    ring = np.stack([6 * np.cos(angles), 6 * np.sin(angles)], 1)
    centres, lefts = (20, 40), (4, 24)
    batch = trainer.collate([trainer.dataset[(0, i)] for i in range(2)])
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lms = [ring + (cx, 30) for cx in centres]
    batch["image"] = x
    batch["condition"] = torch.stack(
        [tensor(render_condition((64, 64), landmarks=lm, mode="landmark")) for lm in lms]
    )
    boxes = [[cx - 8, 22, cx + 8, 38] for cx in centres]
    batch["face_box"] = torch.tensor(boxes, dtype=torch.float32)
    trainer.compute_loss(batch, torch.Generator().manual_seed(0), cft=True)
    for i, (lm, left) in enumerate(zip(lms, lefts)):
        half = x[i, :, :, left : left + 32]
        assert torch.equal(seen["image"][i], torch.cat([half, half], -1))
        faces = np.stack([lm - (left, 0), lm - (left, 0) + (32, 0)])
        own = tensor(render_condition((64, 64), landmarks=faces, mode="landmark"))
        assert own.amax() > 0 and torch.equal(seen["cond"][i], own)
    # outside CFT the condition is the sample's own, untouched
    trainer.compute_loss(batch, torch.Generator().manual_seed(0), cft=False)
    assert torch.equal(seen["cond"], batch["condition"])
