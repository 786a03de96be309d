"""The edit pipeline's loading: Hub ids from the Hugging Face cache offline, diffusers'
exception types kept, the Hub hint only after a Hub lookup, and a wrong layout refused by
`edit` before any computation (issue 22)."""

from __future__ import annotations

import shutil

import pytest
import torch

from instantportrait.cli import main
from instantportrait.errors import InstantPortraitError, ModelNotFoundError
from instantportrait.model_check import ModelMismatchError
from instantportrait.pipelines import InstantPortraitPipeline, load_edit_pipeline


def _same_weights(a, b) -> None:
    for (name, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(p, q), name


def test_hub_id_loads_from_the_cache_offline(hub_cache, tiny_model_dir):
    snapshot = hub_cache("timbrooks/instruct-pix2pix", tiny_model_dir)
    pipe = load_edit_pipeline("timbrooks/instruct-pix2pix")
    _same_weights(pipe, InstantPortraitPipeline.from_pretrained(tiny_model_dir))
    assert pipe.unet.config._name_or_path.startswith(str(snapshot))  # the cache, not the net


def test_missing_variant_stays_a_value_error_and_a_folder_gets_no_hub_hint(
    hub_cache, tiny_model_dir
):
    with pytest.raises(ValueError) as local:
        InstantPortraitPipeline.from_pretrained(tiny_model_dir, variant="fp16")
    assert not isinstance(local.value, OSError)  # diffusers' type, not turned into OSError
    assert isinstance(local.value, InstantPortraitError)  # still one line in the CLI
    assert "HF_HUB_OFFLINE" not in str(local.value) and "Hub" not in str(local.value)
    assert "\n" not in str(local.value)
    hub_cache("org/editor", tiny_model_dir)
    with pytest.raises(ValueError) as hub:
        InstantPortraitPipeline.from_pretrained("org/editor", variant="fp16")
    assert not isinstance(hub.value, OSError)
    assert "HF_HUB_OFFLINE=1 is set" in str(hub.value)  # a Hub lookup happened: the hint


def test_missing_component_of_a_local_folder_is_an_os_error_without_hub_hint(
    tmp_path, tiny_model_dir
):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    shutil.rmtree(broken / "vae")
    with pytest.raises(OSError) as info:
        InstantPortraitPipeline.from_pretrained(broken)
    assert isinstance(info.value, ModelNotFoundError) and "HF_HUB_OFFLINE" not in str(info.value)


def test_wrong_layouts_are_refused_before_loading(layouts, tmp_path, tiny_pipe):
    from instantportrait.single_file import save_single_file

    with pytest.raises(ModelMismatchError, match="SD1.5 text-to-image .* edit needs"):
        InstantPortraitPipeline.from_pretrained(layouts["sd15"])
    with pytest.raises(ModelMismatchError, match="SD1.5 text-to-image single-file checkpoint"):
        load_edit_pipeline(layouts["sd15.safetensors"], config=layouts["ip2p"])
    ckpt = save_single_file(tiny_pipe, tmp_path / "tiny.safetensors")
    with pytest.raises(ModelMismatchError, match="config .*SDXL"):
        load_edit_pipeline(ckpt, config=layouts["sdxl"])


def test_edit_with_a_text_to_image_folder_is_one_line_exit_2(
    layouts, astronaut_path, tmp_path, capsys
):
    code = main(
        ["edit", str(astronaut_path), "--prompt", "x", "--model", str(layouts["sd15"]),
         "-o", str(tmp_path / "out")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "SD1.5 text-to-image pipeline (UNet with 4 input channels)" in err[0]
    assert "edit needs an InstructPix2Pix-format pipeline (UNet with 8 input" in err[0]
    assert not (tmp_path / "out").exists()
