"""The README's Python examples, run as written.

Each ```python block of README.md runs in a fresh namespace, in a temporary folder that holds
what the examples name: ``runs/ipnet/final`` (a tiny IPNet-like pipeline), ``me.jpg`` and
``a.jpg`` (the astronaut), ``b.jpg`` (Grace Hopper: another size, so the batch example mixes
sizes). The only rewrite: without CUDA, ``"cuda"`` becomes ``"cpu"`` and ``torch.float16``
``torch.float32``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: README text known to be false, and why; a block holding it is expected to fail (the marker
#: lifts itself once the text is fixed).
KNOWN_FALSE = {
    "crop_faces(images, landmarks": "`images` and `landmarks` are never defined in the example",
}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text[: m.start()].count("\n") + 1, m.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8")) if README.is_file() else []


def _params():
    for line, code in BLOCKS:
        marks = [
            pytest.mark.xfail(reason=f"README line {line}: {why}", strict=True)
            for needle, why in KNOWN_FALSE.items()
            if needle in code
        ]
        needs_faces = "instantportrait.faces" in code
        if needs_faces:
            marks.append(pytest.mark.filterwarnings("ignore::DeprecationWarning"))
        yield pytest.param(code, id=f"README.md:{line}", marks=marks)


@pytest.fixture
def example_folder(tmp_path, monkeypatch, tiny_model_dir, astronaut_path, grace_hopper_path):
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "ipnet" / "final")
    for name, src in (("me.jpg", astronaut_path), ("a.jpg", astronaut_path)):
        shutil.copy(src, tmp_path / name)
    shutil.copy(grace_hopper_path, tmp_path / "b.jpg")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_python_examples():
    assert BLOCKS, "README.md holds no ```python block"


@pytest.mark.parametrize("code", list(_params()))
def test_readme_example_runs(code, example_folder):
    if not torch.cuda.is_available():
        code = code.replace('"cuda"', '"cpu"').replace("torch.float16", "torch.float32")
    if "instantportrait.faces" in code:
        pytest.importorskip("dlib")
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
