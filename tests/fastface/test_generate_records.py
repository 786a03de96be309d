"""``generate``'s output records, ``--skip-existing`` and its one-line refusals, on FastFace's
tiny bundle (the cheapest method to run end to end)."""

from __future__ import annotations

import json

import pytest
from test_fastface_cli import _args

from instantportrait.cli import main
from instantportrait.records import read_records


def _run(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        return int(exc.code)


def test_skip_existing_continues_an_interrupted_run(
    tiny_bundle, astronaut_path, tmp_path, isolated_cache, capsys
):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a portrait in a garden\na portrait on a beach\n")
    argv = _args(
        tiny_bundle, astronaut_path, out, "--model", "turbo", "--prompt-file", str(prompts)
    )
    argv += ["--num-images-per-prompt", "2", "--seed", "3"]
    assert _run(*argv) == 0
    records = read_records(out)
    # one seed rule: seed + prompt index * images per prompt + image index
    assert {n: r["seed"] for n, r in records.items()} == {
        "000_00.png": 3,
        "000_01.png": 4,
        "001_00.png": 5,
        "001_01.png": 6,
    }
    assert records["001_01.png"]["prompt"] == "a portrait on a beach"
    whole = (out / "001_01.png").read_bytes()
    # as a Ctrl-C leaves it: the last image gone, one saved but not yet recorded
    (out / "001_01.png").unlink()
    data = json.loads((out / "records.json").read_text())
    del data["outputs"]["001_00.png"], data["outputs"]["001_01.png"]
    (out / "records.json").write_text(json.dumps(data))
    before = {n: (out / n).read_bytes() for n in ("000_00.png", "000_01.png")}
    capsys.readouterr()

    assert _run(*argv) == 2  # the partial folder is refused without a flag
    assert "already exists" in capsys.readouterr().err
    assert _run(*argv, "--skip-existing") == 0
    assert "skipping 2 existing output(s)" in capsys.readouterr().err
    assert (out / "001_01.png").read_bytes() == whole  # made again with its own seed
    assert {n: (out / n).read_bytes() for n in before} == before  # the finished ones kept
    assert sorted(read_records(out)) == ["000_00.png", "000_01.png", "001_00.png", "001_01.png"]

    # a rerun that asks for something else is refused, not mixed in
    other = [a if a != "3" else "9" for a in argv]  # --seed 9
    assert _run(*other, "--skip-existing") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another seed" in err and "000_00.png" in err
    assert _run(*argv, "--skip-existing", "--overwrite") == 2
    assert "not allowed with" in capsys.readouterr().err


def test_records_hold_resolution_and_a_custom_preset_by_value(
    tiny_bundle, astronaut_path, tmp_path, isolated_cache, capsys
):
    preset = tmp_path / "mine.json"
    preset.write_text(json.dumps({"am": {"kind": "scale_power", "power": 3.5}, "guidance": "dcg"}))
    out = tmp_path / "out"
    argv = _args(tiny_bundle, astronaut_path, out, "--model", "turbo", "--prompt", "a portrait")
    assert _run(*argv, "--preset", str(preset)) == 0, capsys.readouterr().err
    record = read_records(out)["000_00.png"]
    assert (record["width"], record["height"]) == (32, 32)
    assert record["settings"]["resolution"] == 32
    assert record["settings"]["preset"]["name"] == "mine"
    assert record["settings"]["preset"]["am"]["power"] == 3.5
    assert record["settings"]["preset"]["guidance"]["variant"] == "dcg2"
    assert record["models"]["base"] == str(tiny_bundle["sdxl"])
    assert record["models"]["face_model"].endswith("arcface.safetensors")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a JSON object"),
        ('{"guidance": "nope"}', "guidance 'nope'"),  # was an internal KeyError
        ('{"guidance": 5}', "a name or a DCG dict"),
        ('{"am": {"kind": "scale_power", "power": "big"}}', "AMPreset.power"),
    ],
)
def test_malformed_preset_file_is_one_line_exit_2(
    tiny_bundle, astronaut_path, tmp_path, capsys, text, needle
):
    preset = tmp_path / "bad.json"
    preset.write_text(text)
    out = tmp_path / "out"
    argv = _args(tiny_bundle, astronaut_path, out, "--prompt", "x", "--preset", str(preset))
    assert _run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "bad.json" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--restore-model", "somewhere"],
        ["--restore-steps", "5"],
        ["--restore-codeformer-fidelity", "0.9"],
    ],
)
def test_restore_options_without_restore_are_refused(
    tiny_bundle, astronaut_path, tmp_path, capsys, extra
):
    out = tmp_path / "out"
    assert _run(*_args(tiny_bundle, astronaut_path, out, "--prompt", "x", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and extra[0] in err and "--restore" in err, err
    assert not out.exists()


def test_evaluate_reads_a_malformed_preset_file_as_one_line(tmp_path):
    from instantportrait.errors import InputError
    from instantportrait.evaluation.methods import build_method

    preset = tmp_path / "bad.json"
    preset.write_text('{"guidance": "nope"}')  # was an internal KeyError at the first item
    with pytest.raises(InputError, match=r"method .*: preset .*bad.json: guidance 'nope'"):
        build_method(f"fastface:hyper,preset={preset}")
