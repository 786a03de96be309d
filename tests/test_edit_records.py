"""``edit``'s output records and seed rule, and ``--restore-*`` options without ``--restore``."""

from __future__ import annotations

import pytest

from instantportrait.cli import main
from instantportrait.records import read_records


def test_edit_records_each_output_with_the_seed_rule(
    tiny_model_dir, astronaut_path, tmp_path, capsys
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("wearing a hat\nas a statue\n")
    out = tmp_path / "o"
    argv = ["edit", str(astronaut_path), "--prompt-file", str(prompts), "--model"]
    argv += [str(tiny_model_dir), "-o", str(out), "--resolution", "32", "--seed", "5"]
    assert main([*argv, "--num-images-per-prompt", "2"]) == 0, capsys.readouterr().err
    records = read_records(out)
    # seed + prompt index * 2 + image index: the second prompt does not repeat the first's
    assert {n: (r["prompt"], r["seed"]) for n, r in records.items()} == {
        "astronaut_000_0.png": ("wearing a hat", 5),
        "astronaut_000_1.png": ("wearing a hat", 6),
        "astronaut_001_0.png": ("as a statue", 7),
        "astronaut_001_1.png": ("as a statue", 8),
    }
    first = records["astronaut_000_0.png"]
    assert first["command"] == "edit" and first["input"] == str(astronaut_path)
    assert (first["width"], first["height"]) == (32, 32)
    assert first["models"]["model"] == str(tiny_model_dir)


@pytest.mark.parametrize("extra", [["--restore-model", "x"], ["--restore-below", "50"]])
def test_edit_restore_options_without_restore_are_refused(
    tiny_model_dir, astronaut_path, tmp_path, capsys, extra
):
    argv = ["edit", str(astronaut_path), "--prompt", "x", "--model", str(tiny_model_dir)]
    assert main([*argv, "-o", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{extra[0]}: only used with --restore" in err
    assert not (tmp_path / "o").exists()
