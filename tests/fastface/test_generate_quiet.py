"""What a user reads from ``generate ... --restore``: our progress bar and our lines (notes
naming each output's file), none of diffusers' loading bars, logs or deprecation warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_fastface_cli import _args


def test_generate_with_restore_prints_only_our_lines(tiny_bundle, astronaut_path, tmp_path):
    from instantportrait.tiny import write_tiny

    restore = write_tiny(tmp_path / "diir", "restore", seed=0)
    argv = _args(tiny_bundle, astronaut_path, tmp_path / "out", "--model", "lightning")
    argv += ["--prompt", "a portrait", "--restore", "--restore-model", str(restore)]
    argv += ["--restore-steps", "1", "--restore-below", "1000", "--num-images-per-prompt", "2"]
    env = dict(os.environ, INSTANTPORTRAIT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    # a fresh process: diffusers' bars and logs are global state another test may have switched
    run = subprocess.run(
        [sys.executable, "-m", "instantportrait", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    err = run.stderr.replace("\r", "\n")
    for noise in ("Loading pipeline components", "Loading weights", "torch_dtype", "deprecated"):
        assert noise not in err, err
    bars = [ln for ln in err.splitlines() if "%|" in ln]
    assert bars and all(ln.startswith("fastface lightning/") for ln in bars), bars
    assert (Path(tmp_path / "out") / "000_00.png").is_file()
    # the restorer's notes name each output by its file (they all said "output 0")
    assert "000_00.png: " in err and "000_01.png: " in err and "output 0" not in err, err


def test_no_loader_passes_the_deprecated_torch_dtype():
    """Every diffusers ``from_pretrained`` goes through ``devices.diffusers_dtype`` (diffusers
    0.42 warns on each ``torch_dtype=``, even under ``data generate --quiet``). The metric
    workers run in their own environments' old transformers, whose keyword is ``torch_dtype``."""
    import instantportrait
    from instantportrait.devices import diffusers_dtype

    root = Path(instantportrait.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "torch_dtype=" in p.read_text(encoding="utf-8")
        and p.name != "devices.py"
        and "worker_scripts" not in p.parts
    ]
    assert offenders == []
    import torch

    assert set(diffusers_dtype(torch.float32).values()) == {torch.float32}
    assert diffusers_dtype(None) == {}
