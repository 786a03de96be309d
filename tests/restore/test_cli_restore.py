"""``instantportrait restore`` and the ``--restore`` option of ``edit``."""

from __future__ import annotations

import numpy as np
from PIL import Image

from instantportrait.cli import main
from instantportrait.records import read_records


def test_restore_cli_folder(restore_bundle, small_astronaut, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    small_astronaut.save(src / "astro.png")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(src / "blank.png")
    out = tmp_path / "out"
    argv = ["restore", str(src), "--model", str(restore_bundle), "--steps", "1", "-o", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "astro.png: restored 1 face(s)" in err and "no face found" in err
    assert np.array_equal(
        np.asarray(Image.open(out / "blank.png")), np.asarray(Image.open(src / "blank.png"))
    )
    assert Image.open(out / "astro.png").size == (256, 256)
    record = read_records(out)["astro.png"]  # DIIR is deterministic: no seed
    assert (record["command"], record["seed"], record["settings"]["steps"]) == ("restore", None, 1)
    assert record["input"] == str(src / "astro.png") and record["models"]["model"] == str(
        restore_bundle
    )
    # the output exists: refused without --overwrite (exit 2, one line)
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_restore_cli_bad_input(tmp_path, capsys):
    assert main(["restore", str(tmp_path / "nope.png"), "--model", "x", "-o", "o"]) == 2
    assert "no such file" in capsys.readouterr().err
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    bad = ["restore", str(img), "--model", str(tmp_path / "m"), "-o", str(tmp_path / "o")]
    assert main(bad) == 2
    assert "no such local folder" in capsys.readouterr().err


def test_restore_cli_loads_every_model_before_touching_the_output(restore_bundle, tmp_path, capsys):
    """A bad --model, --face-parser or --codeformer fails with one line and leaves an existing
    output folder as it was, even with --overwrite (nothing is removed before models load)."""
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.png").write_bytes(b"earlier result")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    base = ["restore", str(img), "-o", str(out), "--overwrite", "--model"]
    for extra, said in (
        ([str(tmp_path / "m")], "--model " + str(tmp_path / "m") + ": model not found"),
        ([str(restore_bundle), "--face-parser", str(junk)], "junk.pth"),
        ([str(restore_bundle), "--codeformer", str(tmp_path / "cf.pth")], "--codeformer"),
    ):
        assert main([*base, *extra]) == 2
        assert said in capsys.readouterr().err
        assert (out / "keep.png").read_bytes() == b"earlier result"


def test_edit_restore_needs_a_model(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(img)
    argv = [
        "edit",
        str(img),
        "--prompt",
        "x",
        "--model",
        "m",
        "--restore",
        "-o",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    assert "--restore-model" in capsys.readouterr().err


def test_maybe_restore_passes_through_without_the_flag():
    import argparse

    from instantportrait.cli.restore_option import add_restore_arguments, maybe_restore

    parser = argparse.ArgumentParser()
    add_restore_arguments(parser)
    args = parser.parse_args([])
    images = [Image.new("RGB", (8, 8))]
    assert maybe_restore(images, args, images) == images
    assert args.restore_below == 100 and args.restore_steps == 30


def test_restore_cli_id_image_without_a_face_fails_first_and_keeps_the_output(
    restore_bundle, small_astronaut, tmp_path, capsys, monkeypatch
):
    """An --id-image without a face: one line naming the option and the file, before any model
    loads (a model that cannot load is never reached), and with --overwrite the previous
    output stays as it was."""
    from instantportrait.restoration import restorer as restorer_module

    def no_loading(*a, **k):
        raise AssertionError("a model loaded before the id image was checked")

    monkeypatch.setattr(restorer_module.FaceRestorer, "from_pretrained", no_loading)
    src = tmp_path / "astro.png"
    small_astronaut.save(src)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(blank)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.png").write_bytes(b"earlier result")
    argv = ["restore", str(src), "--model", str(restore_bundle), "--id-image", str(blank),
            "-o", str(out), "--overwrite"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: --id-image {blank}: no face found"
    assert sorted(p.name for p in out.iterdir()) == ["keep.png"]
    assert (out / "keep.png").read_bytes() == b"earlier result"


def test_restore_cli_two_inputs_leave_no_partial_output(
    restore_bundle, small_astronaut, tmp_path, monkeypatch
):
    """The second of two inputs fails: no folder with only the first result appears, and an
    old output replaced with --overwrite is still whole."""
    from instantportrait.restoration.restorer import FaceRestorer, RestoreResult

    src = tmp_path / "in"
    src.mkdir()
    small_astronaut.save(src / "a.png")
    small_astronaut.save(src / "b.png")
    calls = []

    def restore(self, image, *a, name=None, **k):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("interrupted on the second input")
        return RestoreResult(Image.open(image).convert("RGB"))

    monkeypatch.setattr(FaceRestorer, "restore", restore)
    fresh = tmp_path / "fresh"
    argv = ["restore", str(src), "--model", str(restore_bundle), "-o"]
    assert main([*argv, str(fresh)]) == 1  # an internal error, reported on one line
    assert len(calls) == 2 and not fresh.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.png").write_bytes(b"earlier result")
    calls.clear()
    assert main([*argv, str(old), "--overwrite"]) == 1
    assert sorted(p.name for p in old.iterdir()) == ["keep.png"]
    # without the failure both land, named after their inputs
    monkeypatch.setattr(FaceRestorer, "restore", lambda self, im, *a, **k: RestoreResult(
        Image.open(im).convert("RGB")))  # fmt: skip
    assert main([*argv, str(old), "--overwrite"]) == 0
    assert sorted(p.name for p in old.iterdir()) == ["a.png", "b.png", "records.json"]


def test_restore_cli_encodes_the_id_image_once_for_every_input(
    tiny_fpga, small_astronaut, grace_hopper_path, tmp_path, monkeypatch
):
    """An FPGA folder restores toward --id-image: its F_id (encoded once, before the output is
    touched) reaches the DIIR pipeline for the faces of every input."""
    import pytest
    import torch

    pytest.importorskip("dlib")
    from types import SimpleNamespace

    from instantportrait.pipelines.fpga import FPGAPipeline
    from instantportrait.pipelines.restore import DIIRPipeline

    got = []

    def spy(self, prompt, crops, conds, masks, id_embeds=None, **kw):
        got.append(id_embeds)
        return SimpleNamespace(images=list(crops))

    monkeypatch.setattr(DIIRPipeline, "__call__", spy)
    src = tmp_path / "in"
    src.mkdir()
    small_astronaut.save(src / "a.png")
    small_astronaut.save(src / "b.png")
    argv = ["restore", str(src), "--model", str(tiny_fpga), "--id-image", str(grace_hopper_path),
            "--steps", "1", "-o", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0
    hopper = FPGAPipeline.from_pretrained(str(tiny_fpga)).encode_identity(
        [Image.open(grace_hopper_path)]
    )
    assert len(got) == 2
    for e in got:
        assert e.shape[0] == 1
        torch.testing.assert_close(e, hopper)
