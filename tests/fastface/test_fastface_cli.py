"""``generate --method fastface`` end to end on the tiny bundle; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from instantportrait.cli import main


def _args(bundle, id_image, out, *extra: str) -> list[str]:
    return [
        "generate",
        "--method",
        "fastface",
        "--id-image",
        str(id_image),
        "--face-model",
        str(bundle["arcface"] / "arcface.safetensors"),
        "--base",
        str(bundle["sdxl"]),
        "--distilled",
        str(bundle["sdxl-distilled"]),
        "--ip-adapter",
        str(bundle["faceid-plus-v2"]),
        "--image-encoder",
        str(bundle["clip-vision"]),
        "--resolution",
        "32",
        "--device",
        "cpu",
        "-o",
        str(out),
        *extra,
    ]


def test_generate_writes_images_and_settings(
    tiny_bundle, astronaut_path, tmp_path, isolated_cache, capsys
) -> None:
    out = tmp_path / "out"
    code = main(
        _args(
            tiny_bundle,
            astronaut_path,
            out,
            "--model",
            "turbo",
            "--preset",
            "fastface-am1",
            "--prompt",
            "a portrait in a garden",
            "--num-images-per-prompt",
            "2",
            "--seed",
            "7",
        )
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["000_00.png", "000_01.png", "records.json"]
    assert Image.open(out / "000_00.png").size == (32, 32)
    records = json.loads((out / "records.json").read_text())["outputs"]
    first = records["000_00.png"]
    assert first["resolved"]["family"] == "turbo"
    assert first["settings"]["preset"]["name"] == "fastface-am1"
    assert (first["width"], first["height"], first["settings"]["resolution"]) == (32, 32, 32)
    assert [records[n]["seed"] for n in ("000_00.png", "000_01.png")] == [7, 8]
    assert main(_args(tiny_bundle, astronaut_path, out, "--prompt", "x")) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_face_free_id_image_is_one_line_exit_2(tiny_bundle, tmp_path, capsys) -> None:
    flat = tmp_path / "flat.png"
    Image.new("RGB", (128, 128), (120, 130, 140)).save(flat)
    out = tmp_path / "out"
    assert main(_args(tiny_bundle, flat, out, "--prompt", "x")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no face found" in err and "flat.png" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--preset", "nope"), "--preset"),
        (("--model", "/nonexistent/folder"), "--model"),
        (("--steps", "0"), "--steps"),
    ],
)
def test_bad_options_are_one_line(tiny_bundle, astronaut_path, tmp_path, capsys, extra, message):
    assert main(_args(tiny_bundle, astronaut_path, tmp_path / "o", "--prompt", "x", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_no_face_model_names_what_to_provide(astronaut_path, tmp_path, capsys) -> None:
    code = main(
        ["generate", "--id-image", str(astronaut_path), "--prompt", "x", "-o", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "buffalo_l" in err and "antelopev2" in err
