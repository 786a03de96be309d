"""The shared `generate` command: method groups, shared options, --restore wiring."""

from __future__ import annotations

import pytest

from instantportrait.cli import main


def test_an_option_of_another_method_is_one_line(capsys, tmp_path):
    # --fpga-steps belongs to FPGA; asking FastFace for it is refused before any work.
    code = main(
        ["generate", "--method", "fastface", "--id-image", "x.png", "--prompt", "p",
         "--fpga-steps", "3", "-o", str(tmp_path / "o")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--fpga-steps" in err[0] and "--method fpga" in err[0]
    assert not (tmp_path / "o").exists()


def test_faceanet_refuses_the_shared_id_image(capsys, tmp_path):
    code = main(
        ["generate", "--method", "faceanet", "--identity", str(tmp_path), "--id-image", "a.png",
         "--context-image", "b.png", "--prompt", "p", "-o", str(tmp_path / "o")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--id-image: not an option of --method faceanet" in err


def test_fastface_takes_one_identity(capsys, tmp_path):
    code = main(
        ["generate", "--method", "fastface", "--id-image", "a.png", "--id-image", "b.png",
         "--prompt", "p", "-o", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 2 and "takes one identity, got 2" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["fastface", "fpga", "faceanet"])
def test_restore_without_a_model_fails_before_generating(method, capsys, tmp_path):
    code = main(
        ["generate", "--method", method, "--prompt", "p", "--restore", "-o", str(tmp_path / "o")]
    )
    assert code == 2 and "--restore-model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
