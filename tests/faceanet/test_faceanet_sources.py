"""FaceA-Net's base by Hub id (from the Hugging Face cache, offline) and by local folder,
through the CLI: `train faceanet` then `generate --method faceanet` (issues 22 and 25)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

MIRROR = "stable-diffusion-v1-5/stable-diffusion-inpainting"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INSTANTPORTRAIT_DEBUG": ""}
    return subprocess.run(
        [sys.executable, "-m", "instantportrait", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


#: the tiny tuning settings of tests/faceanet/conftest.py (passed in by the train_args fixture)
TRAIN_ARGS: list[str] = []


@pytest.fixture(autouse=True)
def _tiny_settings(train_args):
    TRAIN_ARGS[:] = train_args


def _train(base: str, photos, out) -> subprocess.CompletedProcess:
    return _cli(
        "train", "faceanet", "--images", *map(str, photos[:2]), "--gender", "woman",
        "--base", base, "--steps", "1", "-o", str(out), *TRAIN_ARGS,
        "--set", "training.validate_every=0", "--set", "training.checkpoint_every=1",
    )  # fmt: skip


def _generate(identity, context, out, *extra: str) -> subprocess.CompletedProcess:
    return _cli(
        "generate", "--method", "faceanet", "--identity", str(identity), "--prompt",
        "a woman smiling", "--context-image", str(context), "--inpaint-steps", "1",
        "-o", str(out), *extra,
    )  # fmt: skip


def test_mirror_hub_id_from_the_cache_trains_and_generates(
    hub_cache, tiny_base, photos, astronaut_path, tmp_path
):
    hub_cache(MIRROR, tiny_base)
    run = tmp_path / "alice"
    done = _train(MIRROR, photos, run)
    assert done.returncode == 0, done.stderr
    meta = json.loads((run / "final" / "faceanet.json").read_text())
    assert meta["base"] == MIRROR  # the identity names the Hub id, not a cache path
    # generation reads the base from the identity: the Hub id, served by the cache again
    done = _generate(run, astronaut_path, tmp_path / "gen")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "gen" / "0000.png").is_file()


@pytest.mark.slow  # the in-process `tuned` fixture covers a local folder on every run
def test_local_folder_trains_and_generates_with_an_inpaint_base_override(
    tiny_base, photos, astronaut_path, tmp_path
):
    run = tmp_path / "bob"
    done = _train(str(tiny_base), photos, run)
    assert done.returncode == 0, done.stderr
    done = _generate(run, astronaut_path, tmp_path / "gen", "--inpaint-base", str(tiny_base))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "gen" / "0000.png").is_file()


def test_uncached_hub_id_and_wrong_layout_are_one_line_before_training(hub_cache, tmp_path, photos):
    from instantportrait.tiny import write_tiny

    hub_cache("someone/other-model", write_tiny(tmp_path / "fpga", "fpga"))
    done = _train(MIRROR, photos, tmp_path / "r1")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert MIRROR in lines[0] and "Hugging Face cache" in lines[0]
    assert f"hf download {MIRROR}" in lines[0]
    # a cached repo in the wrong layout: what it is, and what FaceA-Net needs
    done = _train("someone/other-model", photos, tmp_path / "r2")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "FPGA pipeline folder" in lines[0] and "9 input channels" in lines[0]
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
