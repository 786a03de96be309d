"""Help texts list what the registries hold (protocols, method kinds, trainers, data
commands), so they cannot lag behind them again."""

from __future__ import annotations

import pytest

from instantportrait.cli import main


def _help(monkeypatch, capsys, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside names
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _line(text: str, command: str) -> str:
    return next(ln for ln in text.splitlines() if ln.strip().startswith(command + " "))


def test_top_level_help_lists_every_trainer_and_data_command(monkeypatch, capsys):
    from instantportrait.cli.train import TRAINERS

    text = _help(monkeypatch, capsys)
    train = _line(text, "train")
    assert all(name in train for name in TRAINERS), train
    data = _line(text, "data")
    for command in ("prompts", "generate", "pack", "check", "build-portraits", "pack-portraits"):
        assert command in data, data
    # and `train --help` describes each trainer, not only "train NAME"
    trainers = _help(monkeypatch, capsys, "train")
    for name in TRAINERS:
        assert f"train {name}" not in _line(trainers, name)


def test_evaluate_help_lists_every_protocol_kind_and_paper_table(monkeypatch, capsys):
    from instantportrait.evaluation.methods import METHOD_KINDS
    from instantportrait.evaluation.paper_tables import list_paper_tables
    from instantportrait.evaluation.protocols import list_protocols

    text = _help(monkeypatch, capsys, "evaluate")
    assert {"instantportrait", "fastface", "faceanet", "fpga_multi_id"} <= set(list_protocols())
    for name in [*list_protocols(), *METHOD_KINDS, *list_paper_tables()]:
        assert name in text, name


@pytest.mark.parametrize("command", ["edit", "generate"])
def test_restore_model_help_names_the_fpga_folder_it_takes(monkeypatch, capsys, command):
    text = _help(monkeypatch, capsys, command)
    line = _line(text, "--restore-model PATH")
    assert "FPGA pipeline folder" in line and "DIIR folder" in line
