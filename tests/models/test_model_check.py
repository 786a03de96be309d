"""`identify` / `check_model` on tiny stand-ins of every real layout and every init-tiny kind,
and `instantportrait models list|check` (issue 22)."""

from __future__ import annotations

import pytest

from instantportrait.cli import main
from instantportrait.errors import ModelNotFoundError
from instantportrait.model_check import ModelMismatchError, check_model, identify

#: layout fixture name -> (kind, words the description must contain)
REAL_LAYOUTS = {
    "sd15": ("sd15", "SD1.5 text-to-image pipeline (UNet with 4 input channels)"),
    "ip2p": ("instruct-pix2pix", "InstructPix2Pix-format pipeline (UNet with 8 input"),
    "inpaint": ("sd15-inpainting", "SD1.5 inpainting pipeline (UNet with 9 input channels)"),
    "sdxl": ("sdxl", "SDXL text-to-image pipeline"),
    "kontext": ("flux-kontext", "FLUX.1 Kontext"),
    "controlnet": ("controlnet", "ControlNet"),
    "clip-vision": ("clip-vision", "CLIP vision"),
    "ip2p.safetensors": ("instruct-pix2pix", "single-file checkpoint (UNet with 8 input"),
    "sd15.safetensors": ("sd15", "SD1.5 text-to-image single-file"),
    "sdxl.safetensors": ("sdxl", "SDXL text-to-image single-file"),
    "faceid-plus-v2-sdxl.safetensors": ("ip-adapter-faceid-plus-v2", "2) checkpoint for SDXL"),
    "faceid-plus-v2-sd15.bin": ("ip-adapter-faceid-plus-v2-sd15", "for SD1.5"),
    "ip-adapter-sdxl.safetensors": ("ip-adapter", "an IP-Adapter checkpoint for SDXL"),
    "arcface.onnx": ("arcface-onnx", "ONNX"),
    "codeformer.pth": ("codeformer", "CodeFormer"),
    "bisenet.pth": ("bisenet", "BiSeNet"),
    "lightning-unet.safetensors": ("sdxl-unet", "SDXL text-to-image UNet weights"),
    "hyper-lora.safetensors": ("lora", "LoRA"),
    "unknown.safetensors": ("unknown", "no layout"),
    "notes.txt": ("unknown", "not a model format"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REAL_LAYOUTS))
def test_identify_reads_each_real_layout(layouts, name):
    kind, words = REAL_LAYOUTS[name]
    found = identify(layouts[name])
    assert found.kind == kind and words in found.description, found


#: init-tiny kind -> its identified kind
TINY = {
    "edit": "instruct-pix2pix",
    "fpga": "fpga",
    "sdxl": "sdxl",
    "sdxl-distilled": "sdxl-distilled",
    "arcface": "arcface",
    "clip-vision": "clip-vision",
    "inpaint": "sd15-inpainting",
    "restore": "diir",
    "repcontrolnet": "repcontrolnet",
    "face-parser": "bisenet",
    "codeformer": "codeformer",
    "dataset": "dataset-bundle",
}
#: init-tiny kind -> the use it is made for (checked to fit)
TINY_USE = {
    "edit": "edit",
    "fpga": "fpga",
    "sdxl": "fastface",
    "sdxl-distilled": "distilled",
    "arcface": "face-model",
    "clip-vision": "image-encoder",
    "inpaint": "faceanet",
    "restore": "restore",
    "repcontrolnet": "fpga",
    "face-parser": "face-parser",
    "codeformer": "codeformer",
}


@pytest.fixture(scope="session")
def tiny_kinds(tmp_path_factory):
    from instantportrait.tiny import write_tiny

    root = tmp_path_factory.mktemp("tiny-kinds")
    kinds = [*TINY, "faceid-plus-v2"]
    return {kind: write_tiny(root / kind, kind, seed=0) for kind in kinds}


def test_every_tiny_kind_is_identified_and_fits_its_use(tiny_kinds, capsys):
    for kind, expected in TINY.items():
        assert identify(tiny_kinds[kind]).kind == expected, kind
    for kind, use in TINY_USE.items():
        check_model(tiny_kinds[kind], use)
        assert main(["models", "check", str(tiny_kinds[kind]), "--for", use]) == 0
        assert f"fits {use}" in capsys.readouterr().out
    # the released adapter file name inside its folder, as the FastFace loader reads it
    adapter = check_model(
        tiny_kinds["faceid-plus-v2"], "ip-adapter", file="ip-adapter-faceid-plusv2_sdxl.bin"
    )
    assert adapter.kind == "ip-adapter-faceid-plus-v2"
    # the folder alone, as `models check DIR --for ip-adapter` sees it: its Plus-v2 file is named
    folder = check_model(tiny_kinds["faceid-plus-v2"], "ip-adapter")
    assert "ip-adapter-faceid-plusv2_sdxl.bin is an IP-Adapter FaceID-Plus" in folder.description


@pytest.mark.parametrize(
    "name,use,said,needs",
    [
        ("sd15", "edit", "SD1.5 text-to-image pipeline (UNet with 4 input", "8 input channels"),
        ("inpaint", "edit", "inpainting pipeline (UNet with 9 input", "8 input channels"),
        ("sdxl", "edit", "SDXL text-to-image", "8 input channels"),
        ("ip2p", "faceanet", "InstructPix2Pix-format", "9 input channels"),
        ("sd15", "fastface", "SD1.5 text-to-image", "SDXL"),
        ("inpaint", "fpga-base", "inpainting", "4 input channels"),
        ("faceid-plus-v2-sd15.bin", "ip-adapter", "for SD1.5", "FaceID-Plus-v2 for SDXL"),
        ("ip-adapter-sdxl.safetensors", "ip-adapter", "an IP-Adapter checkpoint", "FaceID"),
        ("codeformer.pth", "face-parser", "CodeFormer", "BiSeNet"),
        ("clip-vision", "face-model", "CLIP vision", "ArcFace"),
    ],
)
def test_a_model_in_the_wrong_use_is_one_line_naming_both(layouts, name, use, said, needs):
    with pytest.raises(ModelMismatchError) as info:
        check_model(layouts[name], use, "--model")
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"--model {layouts[name]}: ")
    assert said in text and needs in text.split(f"{use} needs", 1)[1]


def test_restore_and_fpga_folders_are_not_interchangeable(tiny_kinds):
    with pytest.raises(ModelMismatchError, match="DIIR restorer folder.*fpga needs"):
        check_model(tiny_kinds["restore"], "fpga", "--fpga-model")
    with pytest.raises(ModelMismatchError, match="merged RepControlNet.*restore needs"):
        check_model(tiny_kinds["repcontrolnet"], "restore", "--restore-model")
    check_model(tiny_kinds["fpga"], "restore")  # an FPGA folder restores (DIIR on FPGA)


def test_missing_sources_give_the_same_line_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as local:
        check_model(tmp_path / "nope", "edit", "--model")
    assert str(local.value).startswith(f"--model {tmp_path / 'nope'}: model not found: no such")
    with pytest.raises(ModelNotFoundError) as hub:
        check_model("nobody/nothing", "faceanet", "--base")
    text = str(hub.value)
    assert text.startswith("--base nobody/nothing: model not found: no local folder")
    assert "HF_HUB_OFFLINE=1" in text and "hf download nobody/nothing" in text


def test_hub_id_is_checked_from_the_cache(hub_cache, layouts):
    hub_cache("org/sd15", layouts["sd15"])
    with pytest.raises(ModelMismatchError, match=r"org/sd15 \(from the Hugging Face cache\)"):
        check_model("org/sd15", "edit", "--model")
    assert check_model("org/sd15", "fpga-base").kind == "sd15"


def test_models_list_names_sources_that_exist_with_licences(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "runwayml" not in out.replace("removed runwayml", "")
    for needed in (
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "SG161222/Realistic_Vision_V4.0_noVAE",
        "black-forest-labs/FLUX.1-Kontext-dev",
    ):
        assert needed in out
    assert main(["models", "list", "--for", "fastface"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert "ip-adapter-faceid-plus-v2" in rows and " no " in rows["ip-adapter-faceid-plus-v2"]
    assert "sd15-inpainting" not in rows  # another method's model


def test_registry_licences_say_what_users_ask():
    from instantportrait.model_sources import MODEL_SOURCES

    by_name = {s.name: s for s in MODEL_SOURCES}
    assert by_name["arcface-antelopev2"].commercial == "no"  # insightface: non-commercial
    assert by_name["dlib-face"].commercial == "yes"
    assert by_name["flux-kontext-dev"].commercial == "no"
    assert all(s.commercial in ("yes", "no", "conditions") for s in MODEL_SOURCES)
    assert all(s.size and s.licence and s.used_by for s in MODEL_SOURCES)


def test_models_check_cli_is_one_line_on_a_mismatch(layouts, capsys):
    assert main(["models", "check", str(layouts["sdxl"]), "--for", "edit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SDXL" in err[0] and "8 input channels" in err[0]
    assert main(["models", "check", str(layouts["codeformer.pth"])]) == 0
    assert "CodeFormer" in capsys.readouterr().out


def test_docs_models_page_lists_every_source_with_its_licence():
    from pathlib import Path

    from instantportrait.model_sources import MODEL_SOURCES

    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "models.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in page.splitlines() if "|" in line}
    for s in MODEL_SOURCES:
        assert s.name in rows, s.name
        assert s.source in rows[s.name] and s.licence in rows[s.name], s.name
        assert f"| {s.commercial} |" in rows[s.name], s.name
    assert "docs/models.md" in (root / "README.md").read_text()
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():  # commands never name the removed repos
            assert "runwayml/" not in line or "removed" in line, (doc.name, line)
