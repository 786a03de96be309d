"""Tiny FLUX.1 Kontext folders for the entry-point and adapter tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def kontext_dir(tmp_path_factory):
    """``init-tiny --kind kontext``'s folder (a ``FluxKontextPipeline`` layout)."""
    from instantportrait.tiny import write_tiny

    folder = tmp_path_factory.mktemp("kontext") / "tiny"
    write_tiny(folder, "kontext")
    return folder
