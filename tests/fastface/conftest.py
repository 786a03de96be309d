"""Tiny FastFace bundle (SDXL, family weights, adapter, encoders), written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from instantportrait.tiny import write_tiny

KINDS = ("sdxl", "sdxl-distilled", "faceid-plus-v2", "arcface", "clip-vision")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fastface_tiny")
    return {kind: write_tiny(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="session")
def fastface_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fastface_cache")


@pytest.fixture()
def isolated_cache(fastface_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INSTANTPORTRAIT_CACHE", str(fastface_cache))
    return fastface_cache
