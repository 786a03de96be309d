"""A running app on the tiny bundle, shared by the API and browser tests."""

from __future__ import annotations

import socket
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="needs the app extra (pip install 'instantportrait[app]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bomb(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A valid, tiny PNG file whose header claims ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (3 * 16)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    data += chunk(b"IDAT", zlib.compress(row * 16)) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def hostile_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    text = root / "notes.png"
    text.write_text("this is not an image\n")
    empty = root / "empty.png"
    empty.write_bytes(b"")
    return {"non-image": text, "zero bytes": empty, "pixel bomb": png_bomb(root / "bomb.png")}


@pytest.fixture(scope="module")
def running_app(tiny_model_dir):
    """(url, demo): the app on 127.0.0.1 with the tiny editor, two requests at a time."""
    from instantportrait.app import ModelRegistry, build_app

    registry = ModelRegistry(edit_model=str(tiny_model_dir))
    demo = build_app(registry, concurrency=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()
