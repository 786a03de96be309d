"""`data pack` and `data check` on bad and used folders (the writer policy, every bad row)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from instantportrait.cli import main
from instantportrait.data.pairs import check_dataset, open_pair_source, pack_shards
from instantportrait.errors import InputError


@pytest.fixture
def manifest(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / f"in{i}.png")
        Image.new("RGB", (16, 16), (0, i * 40, 0)).save(root / f"tg{i}.png")
        rows.append({"input": f"in{i}.png", "instruction": f"edit {i}", "target": f"tg{i}.png"})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_pack_into_a_used_folder_refuses_then_replaces_without_stale_shards(
    manifest, tmp_path, capsys
):
    out = tmp_path / "s"
    assert main(["data", "pack", str(manifest), str(out), "--shard-size", "1"]) == 0
    assert len(list(out.glob("shard-*.tar"))) == 4
    capsys.readouterr()
    assert main(["data", "pack", str(manifest), str(out), "--shard-size", "2"]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert len(list(out.glob("shard-*.tar"))) == 4  # untouched
    args = ["data", "pack", str(manifest), str(out), "--shard-size", "2", "--overwrite"]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    assert len(open_pair_source(out)) == 4


def test_pack_of_a_bad_dataset_writes_nothing(manifest, tmp_path):
    (manifest / "in2.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="1 bad rows, nothing written"):
        pack_shards(manifest, tmp_path / "s", 2)
    assert not (tmp_path / "s").exists()


def test_check_lists_every_malformed_row_once_located(manifest, capsys):
    lines = (manifest / "pairs.jsonl").read_text().splitlines()
    lines[0] = "{not json"
    lines[1] = json.dumps({"input": "in1.png", "instruction": 5, "target": "tg1.png"})
    lines[2] = json.dumps(
        {"input": "in2.png", "instruction": "x", "target": "tg2.png", "landmarks": [[1, 2]] * 4}
    )
    lines.append(json.dumps({"input": "gone.png", "instruction": "y", "target": "tg3.png"}))
    (manifest / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    report = check_dataset(manifest)
    assert report.total == 5 and report.ok == 1 and len(report.bad) == 4
    bad = "\n".join(report.bad)
    assert "pairs.jsonl:1: not JSON" in bad
    assert "pairs.jsonl:2: 'instruction' is not a string (int)" in bad
    assert "missing" not in report.bad[1]
    assert "pairs.jsonl:3: 'landmarks' must be 5 [x, y] points" in bad
    assert "gone.png: no such file" in bad
    for line in report.bad:  # the location is said once
        assert line.count("pairs.jsonl:") == 1, line
    assert main(["data", "check", str(manifest)]) == 2
    out = capsys.readouterr()
    assert "5 pairs, 1 good, 4 bad" in out.out and out.err.count("bad: ") == 4
    with pytest.raises(InputError, match="pairs.jsonl:1: not JSON"):
        open_pair_source(manifest)  # training still stops at the first


def test_check_counts_inputs_without_a_face(manifest, capsys, astronaut_path):
    pytest.importorskip("dlib")
    Image.open(astronaut_path).convert("RGB").resize((256, 256)).save(manifest / "in0.png")
    assert main(["data", "check", str(manifest), "--faces"]) == 0
    assert "3 of 4 inputs show no face (75.0%)" in capsys.readouterr().out
