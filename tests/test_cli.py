"""The CLI: edit/init-tiny/env end to end, and exit code 2 with one line for each bad input."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from instantportrait.cli import main
from test_io import png_header_only


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edit_writes_outputs_and_keeps_size(
    tiny_model_dir, astronaut_path, grace_hopper_path, tmp_path, capsys
):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        "edit",
        astronaut_path,
        grace_hopper_path,
        "--prompt",
        "wearing a hat",
        "--model",
        tiny_model_dir,
        "--output",
        out_dir,
        "--resolution",
        64,
        "--keep-size",
    )
    assert code == 0, err
    written = out.split()
    assert [p.split("/")[-1] for p in written] == ["astronaut.png", "grace_hopper.png"]
    assert Image.open(out_dir / "grace_hopper.png").size == (512, 600)
    # without --overwrite nothing is replaced, and the error is one line
    code, out, err = run_cli(
        capsys,
        "edit",
        astronaut_path,
        "--prompt",
        "x",
        "--model",
        tiny_model_dir,
        "--output",
        out_dir,
    )
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err


def test_edit_prompt_file_and_resolution(tiny_model_dir, astronaut_path, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("wearing a hat\n# skipped\nas a statue\n")
    code, out, err = run_cli(
        capsys,
        "edit",
        astronaut_path,
        "--prompt-file",
        prompts,
        "--model",
        tiny_model_dir,
        "-o",
        tmp_path / "o",
        "--resolution",
        48,
        "--steps",
        2,
        "--iterations",
        2,
    )
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "o").glob("*.png"))
    assert names == ["astronaut_000.png", "astronaut_001.png"]
    assert Image.open(tmp_path / "o" / names[0]).size == (48, 48)


def _bad_inputs(tmp_path, astronaut_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("hello")
    cut = tmp_path / "cut.jpg"
    buf = io.BytesIO()
    Image.open(astronaut_path).convert("RGB").save(buf, format="JPEG")
    cut.write_bytes(buf.getvalue()[:3000])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50000, 50000))
    return {
        "empty file": empty,
        "not an image": text,
        "truncated": cut,
        "above the limit": bomb,
        "no such file": tmp_path / "missing.png",
    }


def test_bad_inputs_exit_2_with_one_line(tiny_model_dir, astronaut_path, tmp_path, capsys):
    for expected, path in _bad_inputs(tmp_path, astronaut_path).items():
        code, out, err = run_cli(
            capsys,
            "edit",
            path,
            "--prompt",
            "x",
            "--model",
            tiny_model_dir,
            "-o",
            tmp_path / "never",
        )
        assert code == 2, (expected, err)
        assert err.count("\n") == 1 and expected in err and str(path.name) in err
        assert not (tmp_path / "never").exists()


def test_bad_usage_exit_2(tiny_model_dir, astronaut_path, tmp_path, capsys):
    cases = [
        ["edit", astronaut_path, "--model", tiny_model_dir],  # no prompt
        ["edit", astronaut_path, "--prompt", "", "--model", tiny_model_dir],
        ["edit", astronaut_path, "--prompt", "x", "--model", tmp_path / "nowhere"],
        ["edit", astronaut_path, "--prompt", "x", "--model", tiny_model_dir, "--steps", 0],
        ["edit", astronaut_path, "--prompt", "x", "--model", tiny_model_dir, "--dtype", "int3"],
    ]
    for argv in cases:
        try:
            code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "o")
        except SystemExit as exc:  # argparse's own usage errors
            code, err = exc.code, capsys.readouterr().err
        assert code == 2, argv
        assert err.strip().count("\n") == 0, err


def test_init_tiny_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "tiny"
    assert run_cli(capsys, "init-tiny", target)[0] == 0
    assert (target / "model_index.json").is_file()
    code, _, err = run_cli(capsys, "init-tiny", target)
    assert code == 2 and "already exists" in err


def test_env_reports_versions_and_parts(capsys):
    code, out, _ = run_cli(capsys, "env")
    assert code == 0
    for key in ("torch", "diffusers", "device", "clip vocabulary"):
        assert key in out


def test_console_script_runs_offline():
    proc = subprocess.run(
        [sys.executable, "-m", "instantportrait", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "edit" in proc.stdout and "init-tiny" in proc.stdout


@pytest.mark.parametrize("argv", [["nonsense"], []])
def test_unknown_command_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
