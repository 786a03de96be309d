"""Tiny Qwen-Image-Edit components and folders for the backbone and entry-point tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def qwen_parts():
    """The tiny bundle's components, built in memory (seed 0)."""
    from instantportrait.backbones.qwen_edit_components import build_qwen_edit_components

    return build_qwen_edit_components("tiny", seed=0)


@pytest.fixture(scope="session")
def qwen_edit_dir(tmp_path_factory):
    """``init-tiny --kind qwen-edit``'s folder (a ``QwenImageEditPipeline`` layout)."""
    from instantportrait.tiny import write_tiny

    folder = tmp_path_factory.mktemp("qwen-edit") / "tiny"
    write_tiny(folder, "qwen-edit")
    return folder


@pytest.fixture(scope="session")
def qwen_edit_plus_dir(tmp_path_factory):
    """``init-tiny --kind qwen-edit-plus``'s folder (the ``Qwen-Image-Edit-2509`` layout)."""
    from instantportrait.tiny import write_tiny

    folder = tmp_path_factory.mktemp("qwen-edit-plus") / "tiny"
    write_tiny(folder, "qwen-edit-plus")
    return folder
