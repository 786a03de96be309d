"""The app checks every model path at start and the ComfyUI loaders refuse a wrong model in
one line, from configs only (issue 22; issue 24's "bad model paths start the app fine")."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from instantportrait.cli import main
from instantportrait.errors import ModelNotFoundError
from instantportrait.model_check import ModelMismatchError

ROOT = Path(__file__).resolve().parents[2]


def test_registry_check_passes_on_the_tiny_bundles_and_loads_nothing(
    tiny_model_dir, method_bundles
):
    from instantportrait.app import ModelRegistry

    b = method_bundles
    registry = ModelRegistry(
        edit_model=str(tiny_model_dir),
        fastface_model="turbo",
        fastface={
            "face_model": str(b["arcface"] / "arcface.safetensors"),
            "base": str(b["sdxl"]),
            "distilled": str(b["sdxl-distilled"]),
            "ip_adapter": str(b["faceid-plus-v2"]),
            "image_encoder": str(b["clip-vision"]),
        },
        fpga_model=str(b["fpga"]),
        restore_model=str(b["restore"]),
        faceanet_base=str(b["inpaint"]),
    )
    registry.check()
    assert not any(slot.loaded for slot in registry.slots.values())  # no weights read


def test_bad_model_paths_are_one_line_at_start(method_bundles, tmp_path, capsys, monkeypatch):
    from instantportrait.app import ModelRegistry

    with pytest.raises(ModelNotFoundError, match="--edit-model /no/such/dir: model not found"):
        ModelRegistry(edit_model="/no/such/dir").check()
    restore = str(method_bundles["restore"])
    with pytest.raises(ModelMismatchError, match="--fpga-model .*DIIR restorer .*; fpga needs"):
        ModelRegistry(fpga_model=restore).check()
    with pytest.raises(ModelMismatchError, match="--restore-codeformer .*JSON.*codeformer needs"):
        ModelRegistry(
            restore_model=restore,
            restore={"codeformer": str(method_bundles["restore"] / "model_index.json")},
        ).check()

    def never(*args, **kwargs):  # the app must not be built or launched
        raise AssertionError("the app started with a bad model")

    monkeypatch.setattr("instantportrait.app.build_app", never)
    assert main(["app", "--fpga-model", restore]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fpga-model" in err[0] and "DIIR restorer folder" in err[0]


@pytest.fixture(scope="module")
def pack():
    sys.path.insert(0, str(ROOT))
    try:
        yield importlib.import_module("comfyui")
    finally:
        sys.path.remove(str(ROOT))


def test_comfyui_edit_loader_refuses_an_sdxl_folder_in_one_line(pack, method_bundles):
    loader = pack.NODE_CLASS_MAPPINGS["InstantPortraitLoader"]()
    with pytest.raises(ModelMismatchError) as info:
        loader.load(str(method_bundles["sdxl"]), device="cpu", dtype="float32")
    text = str(info.value)
    assert "\n" not in text and "an SDXL text-to-image pipeline" in text
    assert "edit needs an InstructPix2Pix-format pipeline (UNet with 8 input channels" in text


def test_comfyui_fpga_and_diir_loaders_refuse_each_others_folders(pack, method_bundles):
    nodes = pack.NODE_CLASS_MAPPINGS
    fpga_loader = next(c for n, c in nodes.items() if "FPGA" in n and "Load" in n)()
    diir_loader = next(c for n, c in nodes.items() if "DIIR" in n and "Load" in n)()
    with pytest.raises(ModelMismatchError, match="DIIR restorer folder .*; fpga needs"):
        fpga_loader.load(str(method_bundles["restore"]), device="cpu", dtype="float32")
    with pytest.raises(ModelMismatchError, match="SDXL .*restore needs"):
        diir_loader.load(str(method_bundles["sdxl"]), device="cpu", dtype="float32")
