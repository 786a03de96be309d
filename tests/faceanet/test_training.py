"""FaceA-Net tuning: gradient paths, crops and masks, CLI smoke, kill + resume, attribute swap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from instantportrait.cli import main
from instantportrait.models.feat_embeddings import TASKS
from instantportrait.training.logger import read_metrics
from instantportrait.training.loop import step_generator


def test_only_lora_and_feats_get_gradients_and_only_at_their_rows(trainer_factory, tmp_path):
    tr = trainer_factory(tmp_path / "r")
    tr.setup()
    batch = tr.collate([tr.dataset[(0, i)] for i in range(2)])
    terms = tr.compute_loss(batch, step_generator(0, 7, 0, tr.device))
    terms["loss"].backward()
    v = int(terms["attribute"].item())
    model = tr.model
    for name, p in model.unet.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
        else:
            assert p.grad is None, name
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.unet.named_parameters()
        if "lora_B" in n
    )
    assert all(p.grad is None for p in tr.vae.parameters())
    assert all(p.grad is None for p in tr.text_encoder.parameters())
    g = model.feats.vectors.grad
    assert g is not None
    rows = g.abs().sum(dim=(1, 2))
    for k in range(len(TASKS)):
        assert (rows[k] > 0) == (k in (0, v)), (k, v, rows)
    # checkpoints hold only the trainable tensors (LoRA + vectors), not the base UNet
    view = tr.trainable()["model"]
    n_lora = sum(1 for n, p in model.unet.named_parameters() if "lora_" in n)
    assert len(view.state_dict()) == n_lora + 1


def test_crops_masks_and_the_left_eye_convention(trainer_factory, tmp_path):
    from instantportrait.training.faceanet_data import prepare_crops

    tr = trainer_factory(tmp_path / "r", data={"random_flip": True})
    images, masks, crops = prepare_crops(tr.cfg.data)
    assert images[0].shape == (3, 64, 64) and masks[0].shape == (5, 1, 64, 64)
    for m in masks:
        face = m[0, 0]
        for k in range(1, 5):  # each part lies inside the face box
            assert bool((m[k, 0] <= face).all())

    def cx(m):
        xs = torch.arange(m.shape[-1], dtype=torch.float32)
        return float((m[0].sum(0) * xs).sum() / m[0].sum())

    # the subject's left eye appears on the image's right (unmirrored astronaut)
    assert cx(masks[0][1]) > cx(masks[0][2])
    # a flipped sample still has the left-eye mask on the image's right: labels swapped
    from instantportrait.training.faceanet_data import PhotoCrops

    ds = PhotoCrops(images, masks, 1, True, 0)
    flipped = [ds[(0, i)] for i in range(3) for _ in [0]]
    for item in flipped:
        assert cx(item["masks"][1]) > cx(item["masks"][2])
    # the crop is scale x the face box (head and shoulders) unless the photo is too small
    assert 1 / 2.5 < crops[0].face_ratio < 1 / 2.0


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def test_cli_requires_gender_and_images(photos, tiny_base, tmp_path, capsys):
    code, out = run_cli(
        [
            "train",
            "faceanet",
            "--images",
            photos[0],
            "--base",
            tiny_base,
            "-o",
            tmp_path,
            "--dry-run",
        ],
        capsys,
    )
    # --dry-run prints the settings without the run's inputs, and names what is missing
    assert code == 0 and "note: data.gender" in out.err
    code, out = run_cli(["train", "faceanet", "--gender", "man", "--dry-run"], capsys)
    assert code == 0 and "note: data.images" in out.err
    assert json.loads(out.out)["data"]["gender"] == "man"
    code, out = run_cli(
        ["train", "faceanet", "--gender", "man", "--base", tiny_base, "-o", tmp_path / "r"], capsys
    )
    assert code == 2 and "data.images" in out.err and not (tmp_path / "r").exists()
    code, out = run_cli(
        ["train", "faceanet", "--images", photos[0], "--gender", "man", "--style", "--dry-run"],
        capsys,
    )
    assert code == 0 and json.loads(out.out)["training"]["max_steps"] == 600
    code, out = run_cli(
        [
            "train",
            "faceanet",
            "--images",
            photos[0],
            "--gender",
            "man",
            "--attribute",
            "nose",
            "--dry-run",
        ],
        capsys,
    )
    assert code == 2 and "--from" in out.err


def test_tuned_identity_files(tuned):
    final = tuned / "final"
    meta = json.loads((final / "faceanet.json").read_text())
    assert meta["gender"] == "woman" and meta["num_vectors"] == 4 and meta["steps"] == 2
    assert meta["lora_rank"] == 4 and meta["tuning_seconds"] > 0
    lora = load_file(str(final / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("unet.") and "lora_" in k for k in lora)
    feats = load_file(str(final / "feat_embeddings" / "diffusion_pytorch_model.safetensors"))
    assert feats["vectors"].shape == (5, 4, 32)
    assert (tuned / "validation" / "step-000002.png").is_file()
    assert (tuned / "checkpoints" / "step-000002" / "model.safetensors").is_file()


def test_killed_and_resumed_matches_uninterrupted(photos, tiny_base, tmp_path, capsys, train_args):
    common = [
        "train",
        "faceanet",
        "--images",
        *photos,
        "--gender",
        "man",
        "--base",
        tiny_base,
        *train_args,
        "--set",
        "training.checkpoint_every=2",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    code, out = run_cli([*common, "-o", one, "--steps", 4], capsys)
    assert code == 0, out.err
    code, out = run_cli([*common, "-o", two, "--steps", 2], capsys)
    assert code == 0, out.err
    # the first run "dies" after its step-2 checkpoint: its export and later rows are gone
    import shutil

    shutil.rmtree(two / "final")
    code, out = run_cli([*common, "-o", two, "--steps", 4, "--resume", "latest"], capsys)
    assert code == 0, out.err
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [1, 2, 3, 4] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "l_face", "l_attr", "attribute"):
            assert ra[key] == rb[key], (key, ra["step"])
    la = load_file(str(one / "final" / "pytorch_lora_weights.safetensors"))
    lb = load_file(str(two / "final" / "pytorch_lora_weights.safetensors"))
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
    fa = load_file(str(one / "final" / "feat_embeddings" / "diffusion_pytorch_model.safetensors"))
    fb = load_file(str(two / "final" / "feat_embeddings" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(fa["vectors"], fb["vectors"])
    assert json.loads((one / "final" / "faceanet.json").read_text())["num_vectors"] == 3


def test_attribute_swap_changes_only_that_attributes_vectors(
    tuned, other_person, tmp_path, capsys, train_args
):
    out_dir = tmp_path / "swap"
    code, out = run_cli(
        [
            "train",
            "faceanet",
            "--from",
            tuned,
            "--images",
            other_person,
            "--attribute",
            "nose",
            "--steps",
            1,
            "-o",
            out_dir,
            *train_args,
            "--set",
            "training.batch_size=1",
        ],
        capsys,
    )
    assert code == 0, out.err
    before = load_file(
        str(tuned / "final" / "feat_embeddings" / "diffusion_pytorch_model.safetensors")
    )
    after = load_file(
        str(out_dir / "final" / "feat_embeddings" / "diffusion_pytorch_model.safetensors")
    )
    changed = [not torch.equal(before["vectors"][k], after["vectors"][k]) for k in range(5)]
    assert changed == [False, False, False, True, False]  # face, l-eye, r-eye, nose, mouth
    rows = read_metrics(out_dir)
    assert rows[0]["l_face"] == 0.0 and rows[0]["attribute"] == TASKS.index("nose")
    meta = json.loads((out_dir / "final" / "faceanet.json").read_text())
    prior = json.loads((tuned / "final" / "faceanet.json").read_text())
    assert meta["steps"] == 3 and meta["history"][-1]["attribute"] == "nose"
    assert meta["gender"] == "woman" and meta["base"] == prior["base"]
    # the swap repaints alice's face: her face/crop ratio, not the donor's crops'
    assert meta["face_ratio"] == prior["face_ratio"]
    assert np.isfinite(rows[0]["loss"])


def test_ablation_without_embeddings_saves_no_vectors(trainer_factory, tmp_path):
    tr = trainer_factory(tmp_path / "r", model={"use_embeddings": False}, training={"max_steps": 1})
    final = tr.fit(resolved_config={})
    assert not (final / "feat_embeddings").exists()
    assert json.loads((final / "faceanet.json").read_text())["use_embeddings"] is False


@pytest.mark.parametrize("space", ["input"])
def test_input_space_vectors_get_gradients(trainer_factory, tmp_path, space):
    tr = trainer_factory(tmp_path / "r", model={"feat_space": space})
    tr.setup()
    batch = tr.collate([tr.dataset[(0, i)] for i in range(2)])
    terms = tr.compute_loss(batch, step_generator(0, 2, 0, tr.device))
    terms["loss"].backward()
    rows = tr.model.feats.vectors.grad.abs().sum(dim=(1, 2))
    v = int(terms["attribute"].item())
    assert [bool(r > 0) for r in rows] == [k in (0, v) for k in range(5)]


def test_backward_per_task_gives_the_joint_gradient(trainer_factory, tmp_path):
    """One backward per task (the first task's graph freed early) = one backward of L_A."""
    tr = trainer_factory(tmp_path / "r")
    tr.setup()
    batch = tr.collate([tr.dataset[(0, i)] for i in range(2)])
    params = [p for p in tr.model.parameters() if p.requires_grad]

    def grads(backward: bool):
        for p in params:
            p.grad = None
        terms = tr.compute_loss(batch, step_generator(0, 3, 0, tr.device), backward=backward)
        if not backward:
            terms["loss"].backward()
        return terms, [p.grad.clone() for p in params]

    joint_terms, joint = grads(False)
    split_terms, split = grads(True)
    assert joint_terms["loss"].item() == pytest.approx(split_terms["loss"].item(), rel=1e-6)
    assert joint_terms["loss"].item() == pytest.approx(
        (joint_terms["l_face"] + joint_terms["l_attr"]).item(), rel=1e-6
    )
    assert any(g.abs().sum() > 0 for g in joint)
    for a, b in zip(joint, split):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    # a dropped term would show: the face term alone is a different gradient
    for p in params:
        p.grad = None
    tr.cfg.tuning.tasks = "global"
    tr.compute_loss(batch, step_generator(0, 3, 0, tr.device), backward=True)
    assert not all(
        torch.allclose(p.grad if p.grad is not None else torch.zeros_like(g), g)
        for p, g in zip(params, joint)
    )


def test_memory_flags_reach_the_config(photos, capsys):
    code, out = run_cli(
        ["train", "faceanet", "--images", photos[0], "--gender", "man",
         "--gradient-checkpointing", "--bf16", "--dry-run"],
        capsys,
    )  # fmt: skip
    cfg = json.loads(out.out)
    assert code == 0 and cfg["training"]["gradient_checkpointing"] is True
    assert cfg["training"]["mixed_precision"] == "bf16"
    assert cfg["tuning"]["backward_per_task"] is True


def test_gradient_checkpointing_keeps_the_gradient(trainer_factory, tmp_path):
    """Recomputed activations: the same gradient for the LoRA and the [feat] vectors."""
    out = []
    for ckpt in (False, True):
        tr = trainer_factory(tmp_path / f"r{ckpt}", training={"gradient_checkpointing": ckpt})
        torch.manual_seed(0)  # the same LoRA initialisation in both
        tr.setup()
        batch = tr.collate([tr.dataset[(0, i)] for i in range(2)])
        tr.compute_loss(batch, step_generator(0, 5, 0, tr.device), backward=True)
        out.append(
            {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}
        )
    assert out[0].keys() == out[1].keys() and any("feats" in n for n in out[0])
    for n in out[0]:
        assert torch.allclose(out[0][n], out[1][n], rtol=1e-4, atol=1e-7), n
