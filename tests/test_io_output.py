"""The writer policy's path checks, plain-write modes inside atomic folders, and the size
limit applied before any work."""

from __future__ import annotations

import os
import stat

import pytest

from instantportrait.errors import InputError
from instantportrait.io import MAX_RESOLUTION, ResolutionPolicy
from instantportrait.writer import atomic_directory, check_output_path, save_image


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_directory_gives_owner_only_files_plain_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "bundle") as tmp:
            (tmp / "sub").mkdir(mode=0o700)
            fd = os.open(tmp / "sub" / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
    finally:
        os.umask(old)
    out = tmp_path / "bundle"
    assert mode(out) == 0o777 & ~umask
    assert mode(out / "sub") == 0o777 & ~umask
    assert mode(out / "sub" / "weights.safetensors") == 0o666 & ~umask
    assert mode(out / "run.sh") == 0o777 & ~umask  # executables stay executable


def test_save_image_plain_mode(tmp_path):
    from PIL import Image

    old = os.umask(0o022)
    try:
        save_image(Image.new("RGB", (8, 8)), tmp_path / "a" / "x.png")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a" / "x.png") == 0o644


def test_check_output_path(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file, but an output folder"):
        check_output_path(f, kind="dir")
    with pytest.raises(InputError, match="which is a file"):
        check_output_path(f / "deeper" / "out.png", kind="file")
    with pytest.raises(InputError, match="is a folder, but an output file"):
        check_output_path(tmp_path, kind="file")
    assert check_output_path(tmp_path / "new", kind="dir") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # nothing created


def test_resolution_limits():
    with pytest.raises(InputError, match="above the limit"):
        ResolutionPolicy(long_side=100000)
    with pytest.raises(InputError, match="above the limit"):
        ResolutionPolicy(long_side=None).target_size(MAX_RESOLUTION + 8, 16)
    assert ResolutionPolicy(long_side=None).target_size(MAX_RESOLUTION, 16) == (MAX_RESOLUTION, 16)
