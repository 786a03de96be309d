"""``instantportrait evaluate`` end to end on tiny components: two faces x two prompts x two
methods write the store, report.md, report.csv, pareto.png and the contact sheet; a rerun
does nothing; bad input is one line and exit code 2."""

from __future__ import annotations

import csv
import shutil

import pytest
from PIL import Image

from instantportrait.cli import main
from instantportrait.evaluation.store import ResultStore


@pytest.fixture
def faces_dir(tmp_path, astronaut_path, grace_hopper_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    shutil.copy(astronaut_path, folder / "astronaut.png")
    shutil.copy(grace_hopper_path, folder / "grace_hopper.jpg")
    return folder


def test_evaluate_end_to_end_on_tiny_components(
    tmp_path, faces_dir, tiny_model_dir, tiny_clip_dir, lpips_alex_dir, capsys
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("wearing a 1920s flapper dress, feathered headband\nas a marble statue\n")
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--protocol",
        "instantportrait",
        "--faces",
        str(faces_dir),
        "--prompts",
        str(prompts),
        "--method",
        f"one=edit:{tiny_model_dir},steps=1,resolution=64",
        "--method",
        f"boost=edit:{tiny_model_dir},steps=1,iterations=2,resolution=64",
        "--metrics",
        "face_sim_dlib,clip_t_vitl14,hps_v2,intra_lpips,params,steps,ffc",
        "--weights",
        f"clip-vit-l-14={tiny_clip_dir}",
        "--weights",
        f"lpips={lpips_alex_dir}",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    for name in ("results.sqlite", "report.md", "report.csv", "pareto.png", "contact_sheet.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "outputs").rglob("*.png"))) == 8
    with Image.open(out / "pareto.png") as im:
        assert im.size[0] > 100
    with Image.open(out / "contact_sheet.png") as im:
        assert im.size == (128 * (1 + 2 * 2), 40 + 2 * 128)

    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["method"] for r in rows] == ["one", "boost"]
    assert b"\r" not in (out / "report.csv").read_bytes()  # plain \n line ends
    header = list(rows[0])
    order = [h for h in header if h in ("clip_t_vitl14", "hps_v2", "intra_lpips", "params")]
    assert order == ["clip_t_vitl14", "hps_v2", "intra_lpips", "params"]  # Table 1's order
    for r in rows:
        assert r["clip_t_vitl14_status"] == "ok" and r["clip_t_vitl14_n"] == "4"
        assert -1 <= float(r["clip_t_vitl14"]) <= 1
        assert r["intra_lpips_status"] == "ok" and r["intra_lpips_n"] == "2"
        assert r["hps_v2_status"] == "unavailable"
        assert r["ffc_n"] == "4" or r["ffc_status"] == "unavailable"
    assert [r["steps"] for r in rows] == ["1", "2"]
    assert rows[0]["params"] == rows[1]["params"] != ""
    md = (out / "report.md").read_text()
    assert "| one |" in md and "| boost |" in md and "hps_v2" in md
    assert "![Contact sheet](contact_sheet.png)" in md

    with ResultStore(out) as store:
        before = store.count()
        assert {o["status"] for o in store.outputs()} == {"ok"}
    capsys.readouterr()
    assert main(args) == 0  # a rerun finds everything done
    err = capsys.readouterr().err
    assert "8 items (8 already done, 0 generated, 0 failed)" in err
    with ResultStore(out) as store:
        assert store.count() == before
    assert main(["evaluate", "--out", str(out), "--report-only"]) == 0


def test_evaluate_bad_input_is_one_line_and_exit_2(tmp_path, faces_dir, capsys):
    out = str(tmp_path / "o")
    cases = [
        (["--faces", str(faces_dir), "--out", out], "--method"),
        (["--faces", str(faces_dir), "--method", "x=nope:1", "--out", out], "nope"),
        (
            ["--faces", str(faces_dir), "--method", "identity", "--metrics", "zz", "--out", out],
            "zz",
        ),
        (["--faces", str(tmp_path / "none"), "--method", "identity", "--out", out], "no such"),
        (
            ["--protocol", "nope", "--faces", str(faces_dir), "--method", "identity", "--out", out],
            "nope",
        ),
        (
            ["--faces", str(faces_dir), "--method", "identity", "--weights", "bad", "--out", out],
            "KEY",
        ),
    ]
    for extra, needle in cases:
        capsys.readouterr()
        assert main(["evaluate", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_evaluate_dry_run_and_list_metrics(faces_dir, tmp_path, capsys):
    assert main(["evaluate", "--list-metrics"]) == 0
    assert "face_sim_dlib" in capsys.readouterr().out
    args = ["evaluate", "--protocol", "fastface", "--faces", str(faces_dir), "--method"]
    assert main([*args, "ident=identity", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "splits: realistic, stylistic" in text and "items" in text
    assert not (tmp_path / "o").exists()
