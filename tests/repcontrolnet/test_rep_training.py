"""``train repcontrolnet`` through the CLI: 2 steps, checkpoint, resume, merged export."""

from __future__ import annotations

import json

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from instantportrait.cli import main


def _dataset(folder, astronaut_path):
    folder.mkdir()
    Image.open(astronaut_path).convert("RGB").resize((64, 64)).save(folder / "a.png")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / "c.png")
    save_file({"id_embeds": torch.randn(4, 32)}, str(folder / "id.safetensors"))
    row = {"image": "a.png", "conditioning_image": "c.png", "text": "an astronaut"}
    rows = [{**row, "id_embeds": "id.safetensors"}, {**row, "id_embeds": "id.safetensors"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return folder


def test_train_repcontrolnet_smoke(tmp_path, astronaut_path, capsys, tiny_fpga):
    data = _dataset(tmp_path / "data", astronaut_path)
    out = tmp_path / "run"
    encoder = tiny_fpga  # the FPGA encoder that "made" the F_id
    sets = [  # no model.id_dim: F_id's width comes from the identity encoder (32 when tiny)
        "model.pretrained=tiny", "model.adapter_channels=[8,16,16,32]",
        f"model.identity_encoder={encoder}",
        f"data.path={data}", "data.resolution=64", f"training.output_dir={out}",
        "training.max_steps=2", "training.batch_size=2", "training.mixed_precision=no",
        "training.gradient_checkpointing=false", "training.tensorboard=false",
    ]  # fmt: skip
    argv = ["train", "repcontrolnet", *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 0
    final = out / "final"
    assert (final / "model_index.json").is_file() and (final / "rep_branches.safetensors").is_file()
    branches = load_file(str(final / "rep_branches.safetensors"))
    assert any(".branch." in k for k in branches) and any(
        k.startswith("adapter.") for k in branches
    )
    assert not any(".base." in k for k in branches)
    # resume from the newest checkpoint to one more step
    argv3 = [a if a != "training.max_steps=2" else "training.max_steps=3" for a in argv]
    assert main([*argv3, "--resume", "latest"]) == 0
    assert "resumed from" in capsys.readouterr().out

    from instantportrait.pipelines.rep_controlnet import RepControlNetPipeline

    pipe = RepControlNetPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    # the export carries the identity encoder: it takes face images, like the FPGA pipeline
    assert pipe.has_identity_encoder and pipe.config.face_embedder == "dlib"
    img = pipe(
        "an astronaut", Image.new("RGB", (64, 64)), id_embeds=torch.randn(1, 4, 32),
        num_inference_steps=2, generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    assert img.size == (64, 64)
    # an id_dim other than the encoder's is refused, naming both widths
    assert main([*argv, "--set", "model.id_dim=768", "--overwrite"]) == 2
    assert "its F_id is 32 wide, model.id_dim is 768" in capsys.readouterr().err


def test_train_repcontrolnet_dry_run_and_bad_data(tmp_path, capsys):
    assert main(["train", "repcontrolnet", "--set", "data.path=x", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["init_scale"] == 0.1 and resolved["merge"] == {
        "alpha": 1.0,
        "beta": 1.0,
    }
    bad = ["train", "repcontrolnet", "--set", f"data.path={tmp_path}", "--set",
           "model.pretrained=tiny", "--set", f"training.output_dir={tmp_path / 'r'}",
           "--set", "training.mixed_precision=no"]  # fmt: skip
    assert main(bad) == 2
    assert "metadata.jsonl" in capsys.readouterr().err


def test_train_repcontrolnet_encodes_face_photos_with_the_fpga_encoder(
    tmp_path, astronaut_path, capsys, monkeypatch, tiny_fpga
):
    """Rows may give a face photo instead of a precomputed F_id: the frozen FPGA encoder turns
    it into F_id once per file; without the encoder it is one error line."""
    import pytest

    pytest.importorskip("dlib")
    from instantportrait.pipelines.id_encoding import IdentityEncoder

    data = tmp_path / "data"
    data.mkdir()
    Image.open(astronaut_path).convert("RGB").resize((64, 64)).save(data / "a.png")
    Image.open(astronaut_path).convert("RGB").save(data / "face.png")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(data / "c.png")
    row = {"image": "a.png", "conditioning_image": "c.png", "text": "x", "face": "face.png"}
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in [row, row]))
    calls = []
    real = IdentityEncoder.encode_identity

    def counted(self, faces, names=None):
        calls.append(names)
        return real(self, faces, names)

    monkeypatch.setattr(IdentityEncoder, "encode_identity", counted)
    sets = [
        "model.pretrained=tiny", "model.id_dim=32", "model.adapter_channels=[8,16,16,32]",
        f"data.path={data}", "data.resolution=64", f"training.output_dir={tmp_path / 'r'}",
        "training.max_steps=2", "training.batch_size=2", "training.mixed_precision=no",
        "training.tensorboard=false", "training.gradient_checkpointing=false",
    ]  # fmt: skip
    argv = ["train", "repcontrolnet", *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 2
    assert "set model.identity_encoder" in capsys.readouterr().err
    encoder = tiny_fpga
    assert main([*argv, "--set", f"model.identity_encoder={encoder}", "--overwrite"]) == 0
    assert len(calls) == 1  # one face file: encoded once, then cached
    mixed = data / "metadata.jsonl"
    mixed.write_text("\n".join(json.dumps(r) for r in [row, {**row, "face": ""}]))
    assert main([*argv, "--set", f"model.identity_encoder={encoder}", "--overwrite"]) == 2
    assert "row 1 gives no identity" in capsys.readouterr().err


def test_train_repcontrolnet_on_fpgas_portrait_dataset(
    tmp_path, portrait_dir, tiny_fpga, monkeypatch
):
    """The same data as the ID-ControlNet (IDZoom layout): the skeleton condition drawn from
    each row's keypoints (Table 6's setting) and F_id from its aligned face crop."""
    import pytest

    pytest.importorskip("dlib")
    from instantportrait.pipelines.id_encoding import IdentityEncoder
    from instantportrait.training.repcontrolnet import (
        RepControlNetConfig,
        RepControlNetTrainer,
        RepDataConfig,
    )

    crops = []
    real = IdentityEncoder.encode_face_crops

    def counted(self, batch):
        crops.append(batch)
        return real(self, batch)

    monkeypatch.setattr(IdentityEncoder, "encode_face_crops", counted)
    data = RepDataConfig(path=str(portrait_dir), resolution=32, condition="skeleton")
    cfg = RepControlNetConfig(data=data)
    cfg.model.pretrained, cfg.model.id_dim = "tiny", 32
    cfg.model.adapter_channels, cfg.model.identity_encoder = [8, 16, 16, 32], str(tiny_fpga)
    cfg.training.output_dir, cfg.training.max_steps = str(tmp_path / "run"), 1
    cfg.training.batch_size, cfg.training.mixed_precision = 2, "no"
    cfg.training.tensorboard, cfg.training.gradient_checkpointing = False, False
    trainer = RepControlNetTrainer(cfg)
    trainer.fit()
    assert len(crops) == 1 and crops[0].shape == (2, 3, 224, 224)  # the dataset's face crops
    item = trainer.dataset[(0, 0)]  # row 0 has keypoints: a skeleton is drawn
    assert item["mode"] == "skeleton" and item["condition"].amax() > 0
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()


def test_every_trainable_group_changes_and_every_frozen_one_stays(
    tmp_path, portrait_dir, tiny_fpga
):
    """Spec §5: the copies Theta_m, the condition adapter and the ID projections train; the
    base weights Theta (every RepLayer's base and the UNet's norms), the VAE, the text
    encoder and the identity encoder stay bit-identical."""
    import pytest

    pytest.importorskip("dlib")
    from instantportrait.models.rep_controlnet import RepLayer
    from instantportrait.training.repcontrolnet import (
        RepControlNetConfig,
        RepControlNetTrainer,
        RepDataConfig,
    )

    cfg = RepControlNetConfig(data=RepDataConfig(path=str(portrait_dir), resolution=32))
    cfg.model.pretrained, cfg.model.identity_encoder = "tiny", str(tiny_fpga)
    cfg.model.adapter_channels = [8, 16, 16, 32]
    cfg.training.output_dir, cfg.training.batch_size = str(tmp_path / "run"), 2
    cfg.training.mixed_precision, cfg.training.tensorboard = "no", False
    cfg.training.gradient_checkpointing = False
    trainer = RepControlNetTrainer(cfg)
    trainer.setup()
    model = trainer.accelerator.unwrap_model(trainer.model)
    reps = {n: m for n, m in model.unet.named_modules() if isinstance(m, RepLayer)}
    assert reps
    branch = {f"{n}.branch.{k}": p for n, m in reps.items() for k, p in m.branch.named_parameters()}
    inside_reps = {f"{n}.{k}" for n, m in reps.items() for k, _ in m.named_parameters()}
    base = {n: p for n, p in model.unet.named_parameters() if n not in branch}
    assert any(".base." in n for n in base) and any("norm" in n for n in base)
    assert set(branch) | {n for n in base if n in inside_reps} == inside_reps
    trainable = {
        "branch": branch,
        "adapter": dict(model.adapter.named_parameters()),
        "id_projections": dict(model.id_projections.named_parameters()),
    }
    assert trainable["id_projections"]  # F_id width taken from the encoder: ID attention on
    frozen = {
        "unet base": base,
        "vae": dict(trainer.vae.named_parameters()),
        "text_encoder": dict(trainer.text_encoder.named_parameters()),
        "resampler": dict(trainer.identity["resampler"].named_parameters()),
        "image_encoder": dict(trainer.identity["image_encoder"].named_parameters()),
    }
    before = {g: {n: p.detach().clone() for n, p in ps.items()} for g, ps in
              {**trainable, **frozen}.items()}  # fmt: skip
    batch = trainer.collate([trainer.dataset[(0, i)] for i in range(2)])
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # the adapter's zero-initialised output conv opens in step 1
        trainer.training_step(batch, g)
    for group, ps in frozen.items():
        for n, p in ps.items():
            assert torch.equal(p, before[group][n]), f"frozen {group}: {n} changed"
    for group, ps in trainable.items():
        still = sorted(n for n, p in ps.items() if torch.equal(p, before[group][n]))
        assert not still, f"{group}: {len(still)} parameters did not train: {still[:5]}"
