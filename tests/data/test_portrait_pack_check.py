"""FPGA's portrait dataset through `data pack-portraits` (the one writer policy) and `data check`
(both storages accepted, every bad row reported); outputs that are files refused in one line."""

from __future__ import annotations

import json
import shutil

from instantportrait.cli import main
from instantportrait.data.portraits import is_portrait_dataset, open_portrait_source


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def test_pack_portraits_into_a_used_folder_refuses_then_replaces_without_stale_shards(
    portrait_dir, tmp_path, capsys
):
    out = tmp_path / "shards"
    code, _ = run_cli(["data", "pack-portraits", portrait_dir, out, "--shard-size", "1"], capsys)
    assert code == 0 and len(list(out.glob("shard-*.tar"))) == 4
    code, got = run_cli(["data", "pack-portraits", portrait_dir, out, "--shard-size", "3"], capsys)
    assert code == 2 and "already exists (pass --overwrite" in got.err
    assert len(list(out.glob("shard-*.tar"))) == 4  # untouched
    args = ["data", "pack-portraits", portrait_dir, out, "--shard-size", "3", "--overwrite"]
    code, got = run_cli(args, capsys)
    assert code == 0, got.err
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    packed = open_portrait_source(out)
    assert len(packed) == 4  # not 4 + stale rows of the first pack
    assert [packed[i].caption for i in range(4)] == [f"a person number {i}" for i in range(4)]


def test_an_existing_file_as_output_is_one_line(portrait_dir, tmp_path, capsys):
    file = tmp_path / "taken.txt"
    file.write_text("mine")
    code, got = run_cli(["data", "pack-portraits", portrait_dir, file], capsys)
    assert code == 2 and len(got.err.strip().splitlines()) == 1
    assert "is a file" in got.err and file.read_text() == "mine"
    code, got = run_cli(["data", "pack-portraits", portrait_dir, file / "below"], capsys)
    assert code == 2 and "which is a file" in got.err
    code, got = run_cli(["evaluate", "--out", file], capsys)
    assert code == 2 and len(got.err.strip().splitlines()) == 1
    assert "is a file" in got.err and file.read_text() == "mine"


def test_check_accepts_both_portrait_storages(portrait_dir, tmp_path, capsys):
    shards = tmp_path / "shards"
    assert main(["data", "pack-portraits", str(portrait_dir), str(shards)]) == 0
    capsys.readouterr()
    for folder in (portrait_dir, shards):
        assert is_portrait_dataset(folder)
        code, got = run_cli(["data", "check", folder], capsys)
        assert code == 0, got.err
        assert "4 portraits, 4 good, 0 bad" in got.out


def test_check_reports_every_bad_portrait_row(portrait_dir, tmp_path, capsys):
    root = tmp_path / "bad"
    shutil.copytree(portrait_dir, root)
    (root / "faces" / "0001.png").write_bytes(b"not a png")
    rows = [json.loads(line) for line in (root / "portraits.jsonl").read_text().splitlines()]
    rows[2]["landmarks"] = rows[2]["landmarks"][:5]
    rows[3]["face_box"] = [10, 10, 5, 20]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (root / "portraits.jsonl").write_text("\n".join(lines) + "\n")
    code, got = run_cli(["data", "check", root], capsys)
    assert code == 2
    assert "5 portraits, 1 good, 4 bad" in got.out
    bad = [line for line in got.err.splitlines() if line.startswith("bad: ")]
    assert len(bad) == 4
    assert any("key 0001" in b and "face" in b for b in bad)
    assert any("key 0002" in b and "landmarks" in b for b in bad)
    assert any("key 0003" in b and "face_box" in b for b in bad)
    assert any("portraits.jsonl:5" in b for b in bad)
    # and pack-portraits writes nothing from it
    code, got = run_cli(["data", "pack-portraits", root, tmp_path / "out"], capsys)
    assert code == 2 and "4 bad rows, nothing written" in got.err
    assert not (tmp_path / "out").exists()


def test_pair_datasets_are_still_checked_as_pairs(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "pairs"
    root.mkdir()
    Image.new("RGB", (16, 16)).save(root / "in.png")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(root / "tg.png")
    row = {"input": "in.png", "instruction": "edit", "target": "tg.png"}
    (root / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["data", "pack", str(root), str(tmp_path / "shards")]) == 0
    capsys.readouterr()
    for folder in (root, tmp_path / "shards"):
        assert not is_portrait_dataset(folder)
        code, got = run_cli(["data", "check", folder], capsys)
        assert code == 0 and "1 pairs, 1 good, 0 bad" in got.out


def test_build_portraits_rejects_an_unknown_template_before_detection(
    tmp_path, astronaut_path, capsys, monkeypatch
):
    import importlib

    detect = importlib.import_module("instantportrait.faces.detect")  # the module, not the def

    def no_detection(*args, **kwargs):
        raise AssertionError("a detector ran before the arguments were checked")

    monkeypatch.setattr(detect, "detect", no_detection)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(astronaut_path, photos / "a.png")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier dataset")
    args = ["data", "build-portraits", photos, out, "--face-template", "nope", "--overwrite"]
    code, got = run_cli(args, capsys)
    assert code == 2 and len(got.err.strip().splitlines()) == 1
    assert "--face-template 'nope'" in got.err and "arcface" in got.err
    assert (out / "keep.txt").is_file()  # --overwrite removed nothing
