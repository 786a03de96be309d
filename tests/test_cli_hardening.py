"""What a first-time user hits: bad paths, devices and sizes are one line and exit 2 with
nothing written; --skip-existing resumes; warnings are one line, once; the library never
imports the CLI."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

import instantportrait
from instantportrait.cli import main

SRC = Path(instantportrait.__file__).parent


def edit(*argv: str) -> int:
    try:
        return main(["edit", *argv])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--output", "{file}"], "is a file, but an output folder is wanted"),
        (["--output", "{file}/below"], "which is a file"),
        (["--device", "mps"], "--device mps"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--device", "warp9"], "unknown device"),
        (["--resolution", "100000"], "above the limit"),
        (["--speed", "warp"], "--speed"),
        (["--speed", "cuda-graphs", "--device", "cpu"], "needs a CUDA device"),
        (["--num-images-per-prompt", "0"], "--num-images-per-prompt"),
        (["--overwrite", "--skip-existing"], "not allowed with"),
    ],
)
def test_edit_bad_settings_one_line_exit_2_nothing_written(
    extra, needle, tiny_model_dir, astronaut_path, tmp_path, capsys
):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    extra = [a.replace("{file}", str(blocker)) for a in extra]
    out = ["--output", str(tmp_path / "out")] if "--output" not in extra else []
    rc = edit(str(astronaut_path), "--prompt", "hat", "--model", str(tiny_model_dir), *out, *extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err
    assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


def test_skip_existing_resumes_and_num_images_per_prompt(
    tiny_model_dir, astronaut_path, tmp_path, capsys
):
    out = tmp_path / "out"
    common = ["--prompt", "hat", "--model", str(tiny_model_dir), "--resolution", "32"]
    common += ["--output", str(out), "--device", "cpu", "--num-images-per-prompt", "2"]
    assert edit(str(astronaut_path), *common) == 0
    made = sorted(p.name for p in out.iterdir())
    assert made == ["astronaut_0.png", "astronaut_1.png", "records.json"]
    first = (out / "astronaut_1.png").read_bytes()
    (out / "astronaut_0.png").unlink()  # "interrupted" after one image
    capsys.readouterr()
    assert edit(str(astronaut_path), *common, "--skip-existing") == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "astronaut_0.png")]  # only the missing one written
    assert (out / "astronaut_1.png").read_bytes() == first
    assert edit(str(astronaut_path), *common) == 2  # existing outputs refused without a flag


def test_warnings_print_one_line_once(
    tiny_model_dir, astronaut_path, grace_hopper_path, tmp_path, capsys
):
    long_prompt = " ".join(["wearing a very large red hat"] * 20)  # > 77 tokens: truncated
    rc = edit(
        str(astronaut_path),
        str(grace_hopper_path),
        "--prompt",
        long_prompt,
        "--model",
        str(tiny_model_dir),
        "--resolution",
        "32",
        "--output",
        str(tmp_path / "o"),
        "--device",
        "cpu",
    )
    err = capsys.readouterr().err
    assert rc == 0
    lines = [ln for ln in err.splitlines() if "tokens dropped" in ln]
    assert len(lines) == 1, err
    assert lines[0].lstrip("\r").startswith("warning: prompt"), lines
    assert "warnings.warn" not in err and ".py:" not in err


def test_bench_refuses_to_overwrite_results(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("{}")
    rc = main(["bench", "--quick", "--modes", "ipnet", "--repeats", "1", "--out", str(out)])
    assert rc == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "{}"


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(("instantportrait", *path.relative_to(SRC).parent.parts))
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_library_never_imports_the_cli():
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "cli" or rel.name == "__main__.py":
            continue
        if any(
            m == "instantportrait.cli" or m.startswith("instantportrait.cli.")
            for m in _imports(path)
        ):
            offenders.append(str(rel))
    assert offenders == []


def test_device_and_environment_live_in_the_library():
    from instantportrait.cli.common import resolve_device as cli_resolve
    from instantportrait.devices import resolve_device
    from instantportrait.environment import environment_report

    assert cli_resolve is resolve_device
    report = environment_report()
    assert report["torch"] and any("onnxruntime" in k for k in report)


@pytest.mark.parametrize("below", [False, True])
def test_faces_draw_at_a_file_is_one_line(below, astronaut_path, tmp_path, capsys):
    pytest.importorskip("dlib")
    blocker = tmp_path / "f"
    blocker.write_text("x")
    target = blocker / "x" if below else blocker
    rc = main(["faces", "detect", str(astronaut_path), "--draw", str(target)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err


def test_single_multi_step_edit_shows_step_progress_and_plain_modes(
    tiny_model_dir, astronaut_path, tmp_path, capsys
):
    old = os.umask(0o022)
    try:
        rc = edit(
            str(astronaut_path),
            "--prompt",
            "hat",
            "--model",
            str(tiny_model_dir),
            "--steps",
            "2",
            "--resolution",
            "32",
            "--output",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        )
    finally:
        os.umask(old)
    err = capsys.readouterr().err
    assert rc == 0 and "denoising" in err
    assert stat.S_IMODE((tmp_path / "o" / "astronaut.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "o").stat().st_mode) == 0o755


def test_no_empty_float32_notice_on_to(tiny_pipe, caplog):
    import diffusers
    import torch

    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_warning()  # a CLI test may have silenced it
    try:
        tiny_pipe.to("cpu", torch.float32)
        tiny_pipe.to(device=torch.device("cpu"), dtype=torch.float32)
        tiny_pipe.unet.to(dtype=torch.float32)  # the notice itself still reaches the log
    finally:
        diffusers.utils.logging.set_verbosity(level)
    notices = [r for r in caplog.records if "kept in float32" in r.getMessage()]
    assert len(notices) == 1, [r.getMessage() for r in notices]
