"""``instantportrait restore`` and the ``--restore`` option of ``edit``."""

from __future__ import annotations

import numpy as np
from PIL import Image

from instantportrait.cli import main


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
