"""What the CLI says back: values as typed, quoted errors cut between words, options named as
the user wrote them, every error on one line."""

from __future__ import annotations

import pytest

from instantportrait.cli import main
from instantportrait.errors import first_line, shorten_line


def _err(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def test_a_float_option_is_said_back_as_typed(restore_ready, tmp_path, capsys):
    image, model = restore_ready
    code, err = _err(capsys, "restore", image, "--model", model, "-o", tmp_path / "o",
                     "--restore-below", "0")  # fmt: skip
    assert code == 2 and err.endswith("got 0"), err  # was "got 0.0" for a typed 0
    code, err = _err(capsys, "restore", image, "--model", model, "-o", tmp_path / "o",
                     "--guidance-scale", "0.50")  # fmt: skip
    assert code == 2 and err.endswith("got 0.50"), err


def test_typed_floats_still_compute_and_serialise_as_floats():
    import json

    from instantportrait.cli import TypedFloat

    x = TypedFloat("0.50")
    assert f"{x}" == "0.50" and x == 0.5 and x * 2 == 1.0 and json.dumps(x) == "0.5"


def test_quoted_messages_are_cut_between_words():
    text = "We couldn't connect to the Hub and traffic has been disabled by HF_HUB_OFFLINE " * 4
    short = shorten_line(text, 100)
    assert len(short) <= 100 and short.endswith("...")
    assert text.startswith(short[:-3]) and text[len(short) - 3] == " "  # cut at a space
    assert shorten_line("short one", 100) == "short one"
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"


def test_an_option_of_another_method_is_named_as_typed(tmp_path, capsys):
    for typed in ("--fpga-pose", "--pose"):  # one option, two spellings
        code, err = _err(capsys, "generate", "--method", "fastface", typed, "p.json",
                         "--prompt", "x", "-o", tmp_path / "o")  # fmt: skip
        assert code == 2 and err == f"error: {typed}: an option of --method fpga, not fastface"


def test_a_multi_line_error_prints_as_one_line(capsys, monkeypatch):
    from instantportrait.cli import generate
    from instantportrait.errors import InputError

    def fail(args):
        raise InputError("--x: first\n  and second")

    monkeypatch.setattr(generate, "run", fail)
    code, err = _err(capsys, "generate", "--prompt", "x", "-o", "never")
    assert code == 2 and err == "error: --x: first and second"


@pytest.fixture()
def restore_ready(tmp_path, astronaut_path):
    from instantportrait.tiny import write_tiny

    return astronaut_path, write_tiny(tmp_path / "diir", "restore", seed=0)
