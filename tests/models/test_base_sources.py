"""FPGA's and RepControlNet's SD1.5 base by Hub id from the Hugging Face cache (offline),
their defaults naming sources that exist, and a wrong layout refused (issues 22 and 26)."""

from __future__ import annotations

import json
import shutil

import pytest

from instantportrait.model_check import ModelMismatchError


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    """A tiny SD1.5 text-to-image folder (the FPGA bundle's SD parts, as published repos list
    them in a StableDiffusionPipeline model_index.json), and the FPGA bundle itself."""
    from instantportrait.tiny import write_tiny

    root = tmp_path_factory.mktemp("sd15")
    fpga = write_tiny(root / "fpga", "fpga")
    sd = root / "sd15"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(fpga / part, sd / part)
    index = json.loads((fpga / "model_index.json").read_text())
    index = {k: v for k, v in index.items() if k in ("_diffusers_version",)} | {
        "_class_name": "StableDiffusionPipeline",
        **{k: index[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")},
    }
    (sd / "model_index.json").write_text(json.dumps(index))
    return sd, fpga


def test_defaults_name_maintained_sources():
    from importlib.resources import files

    from instantportrait.pipelines.faceanet_parts import DEFAULT_BASE
    from instantportrait.training.fpga import FPGAModelConfig
    from instantportrait.training.repcontrolnet import RepModelConfig

    shipped = files("instantportrait") / "configs"
    rep = json.loads((shipped / "repcontrolnet.json").read_text())["model"]["pretrained"]
    fpga = json.loads((shipped / "fpga.json").read_text())["model"]["pretrained"]
    assert RepModelConfig().pretrained == rep == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert FPGAModelConfig().pretrained == fpga == "SG161222/Realistic_Vision_V4.0_noVAE"
    assert DEFAULT_BASE == "stable-diffusion-v1-5/stable-diffusion-inpainting"


def test_repcontrolnet_base_loads_the_mirror_id_from_the_cache(hub_cache, tiny_sd15):
    from instantportrait.training.repcontrolnet import load_sd_components

    sd, fpga = tiny_sd15
    hub_cache("stable-diffusion-v1-5/stable-diffusion-v1-5", sd)
    parts = load_sd_components("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert parts["unet"].config.in_channels == 4
    assert set(parts) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    # an FPGA pipeline folder is not a base: one line saying what it is
    with pytest.raises(ModelMismatchError, match="model.pretrained .*FPGA pipeline folder"):
        load_sd_components(str(fpga))


def test_fpga_base_and_image_encoder_load_by_hub_id_from_the_cache(hub_cache, tiny_sd15, tmp_path):
    from instantportrait.tiny import write_tiny
    from instantportrait.training.fpga import FPGAModelConfig, load_fpga_parts

    sd, _ = tiny_sd15
    hub_cache("SG161222/Realistic_Vision_V4.0_noVAE", sd)
    adapter_repo = tmp_path / "ip-adapter"
    write_tiny(adapter_repo / "models" / "image_encoder", "clip-vision")
    hub_cache("h94/IP-Adapter", adapter_repo)
    parts = load_fpga_parts(FPGAModelConfig(face_embedder="dlib"))
    assert parts["unet"].config.in_channels == 4
    assert parts["resampler"].config.clip_embed_dim == parts["image_encoder"].config.hidden_size


def test_train_commands_refuse_a_wrong_base_before_any_work(tmp_path, capsys):
    from instantportrait.cli import main
    from instantportrait.tiny import write_tiny

    inpaint = write_tiny(tmp_path / "inpaint", "inpaint")
    restore = write_tiny(tmp_path / "restore", "restore")
    capsys.readouterr()  # the writers' progress bars
    runs = tmp_path / "runs"
    for argv, said in (
        (["train", "repcontrolnet", "--set", f"model.pretrained={inpaint}"], "inpainting"),
        (["train", "fpga", "--stage", "all", "--set", f"model.pretrained={restore}"], "DIIR"),
    ):
        where = ["--set", f"data.path={tmp_path}", "--set", f"training.output_dir={runs}"]
        code = main([*argv, *where])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("error: model.pretrained ") and said in err[0]
        assert "fpga-base needs an SD1.5 text-to-image pipeline (UNet with 4 input" in err[0]
        assert not runs.exists()
