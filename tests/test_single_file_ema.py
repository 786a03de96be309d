"""Single files with two UNets (LDM's EMA copy beside the trained weights), as InstructPix2Pix's
released ``instruct-pix2pix-00-22000.safetensors``/``.ckpt``: the EMA copy loads by default,
``use_ema=False`` / ``--no-ema`` the other, and the loaded copy is named."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from instantportrait.components import build_components
from instantportrait.errors import InstantPortraitError
from instantportrait.pipelines import InstantPortraitPipeline, load_edit_pipeline
from instantportrait.single_file import save_single_file


@pytest.fixture(scope="module")
def two_unet_file(tmp_path_factory):
    """A tiny pipeline saved as its config folder and as one file whose EMA UNet (seed 1)
    differs from its trained UNet (seed 0)."""
    root = tmp_path_factory.mktemp("ema")
    pipe = InstantPortraitPipeline(**build_components("tiny", seed=0))
    ema_unet = build_components("tiny", seed=1)["unet"]
    pipe.save_pretrained(root / "config")
    save_single_file(pipe, root / "ip2p.safetensors", ema_unet=ema_unet)
    return root, pipe.unet, ema_unet


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_file_has_the_ldm_key_layout(two_unet_file):
    root, trained, ema = two_unet_file
    with safe_open(str(root / "ip2p.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        # The names LDM's LitEma gives: "model_ema." + the name after "model." without dots.
        conv_in = "model.diffusion_model.input_blocks.0.0.weight"
        assert conv_in in keys and "model_ema.diffusion_modelinput_blocks00weight" in keys
        assert torch.equal(f.get_tensor(conv_in), trained.conv_in.weight)
        assert torch.equal(
            f.get_tensor("model_ema.diffusion_modelinput_blocks00weight"), ema.conv_in.weight
        )
    n_unet = sum(k.startswith("model.diffusion_model.") for k in keys)
    assert sum(k.startswith("model_ema.") for k in keys) == n_unet == len(trained.state_dict())


def test_ema_by_default_non_ema_on_request(two_unet_file):
    root, trained, ema = two_unet_file
    assert not same_weights(trained, ema)
    file, config = root / "ip2p.safetensors", root / "config"
    default = load_edit_pipeline(file, config=config)
    assert same_weights(default.unet, ema) and "the EMA UNet of ip2p.safetensors" in (
        default.unet_source
    )
    plain = load_edit_pipeline(file, config=config, use_ema=False)
    assert same_weights(plain.unet, trained) and "the non-EMA UNet" in plain.unet_source
    # diffusers' name for the choice.
    extracted = InstantPortraitPipeline.from_single_file(
        file, config=str(config), extract_ema=False
    )
    assert same_weights(extracted.unet, trained)
    # The VAE and the text encoder are the same in both.
    assert same_weights(default.vae, plain.vae)
    assert same_weights(default.text_encoder, plain.text_encoder)


def test_ema_copy_is_what_diffusers_extract_ema_reads(two_unet_file):
    """diffusers' own conversion with ``extract_ema=True`` (its reading of the real layout)
    gives the UNet we load by default."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    root, _, ema = two_unet_file
    state = load_file(str(root / "ip2p.safetensors"))
    theirs = convert_ldm_unet_checkpoint(state, dict(ema.config), extract_ema=True)
    ours = load_edit_pipeline(root / "ip2p.safetensors", config=root / "config").unet
    for key, value in ours.state_dict().items():
        assert torch.equal(theirs[key], value), key


def test_ckpt_file_too(two_unet_file, tmp_path):
    root, trained, ema = two_unet_file
    ckpt = tmp_path / "ip2p.ckpt"
    torch.save({"state_dict": load_file(str(root / "ip2p.safetensors"))}, ckpt)
    pipe = load_edit_pipeline(ckpt, config=root / "config")
    assert same_weights(pipe.unet, ema)
    plain = load_edit_pipeline(ckpt, config=root / "config", use_ema=False)
    assert same_weights(plain.unet, trained)


def test_an_incomplete_ema_copy_is_one_clear_line(two_unet_file, tmp_path):
    from safetensors.torch import save_file

    root, _, _ = two_unet_file
    state = load_file(str(root / "ip2p.safetensors"))
    del state["model_ema.diffusion_modelinput_blocks00weight"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(InstantPortraitError, match="EMA UNet lacks 1 of"):
        load_edit_pipeline(tmp_path / "broken.safetensors", config=root / "config")
    # The trained copy is complete: it still loads.
    load_edit_pipeline(tmp_path / "broken.safetensors", config=root / "config", use_ema=False)


def test_one_unet_file_says_so(tmp_path):
    pipe = InstantPortraitPipeline(**build_components("tiny", seed=0))
    pipe.save_pretrained(tmp_path / "config")
    save_single_file(pipe, tmp_path / "one.safetensors")
    loaded = load_edit_pipeline(tmp_path / "one.safetensors", config=tmp_path / "config")
    assert same_weights(loaded.unet, pipe.unet)
    assert loaded.unet_source == "the UNet of one.safetensors"


def test_cli_no_ema(two_unet_file, tmp_path, astronaut_path):
    root, _, _ = two_unet_file
    base = [sys.executable, "-m", "instantportrait", "edit", str(astronaut_path)]
    common = ["--prompt", "x", "--steps", "1", "--resolution", "32"]
    model = ["--model", str(root / "ip2p.safetensors"), "--config", str(root / "config")]
    run = subprocess.run(
        [*base, *common, *model, "--no-ema", "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "model: the non-EMA UNet of ip2p.safetensors" in run.stderr
    assert (tmp_path / "out" / "astronaut.png").is_file()
    refused = subprocess.run(
        [*base, *common, "--model", str(root / "config"), "--no-ema", "-o", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: --no-ema: only for a single-file --model (.safetensors or .ckpt)"
    ]
