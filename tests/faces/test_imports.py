"""The face package's import graph has no circle, and its public names are what they say."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import instantportrait.faces as faces_pkg

FACES = Path(faces_pkg.__file__).parent


def _faces_imports(path: Path) -> set[str]:
    """Sibling modules of the face package that ``path`` imports (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found - {path.stem}


def test_no_import_circle_between_face_modules():
    graph = {p.stem: _faces_imports(p) for p in FACES.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join([*trail, node, nxt])}")
            if nxt in graph and state.get(nxt) is None:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        if state.get(name) is None:
            visit(name, [])


def test_detect_is_the_function_whatever_was_imported_before():
    # In a fresh interpreter the submodule is imported first (by the analyzer), then the name.
    code = (
        "import instantportrait.faces.analyzer\n"
        "import instantportrait.faces.detect\n"
        "from instantportrait.faces import FaceAnalyzer, detect\n"
        "assert callable(detect) and detect.__name__ == 'detect', detect\n"
        "from instantportrait.faces.detect import FaceDetections\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_exported_name_resolves():
    for name in faces_pkg.__all__:
        assert getattr(faces_pkg, name) is not None
