"""A running app on the tiny bundle, shared by the API and browser tests."""

from __future__ import annotations

import contextlib
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
def running_app(tiny_model_dir, method_bundles, tmp_path_factory):
    """(url, demo): the app on 127.0.0.1 with every tab's tiny model, two requests at a time."""
    from instantportrait.app import build_app

    registry = method_registry(
        tiny_model_dir,
        method_bundles,
        fastface_resolution=32,
        workdir=str(tmp_path_factory.mktemp("app_workdir")),
    )
    demo = build_app(registry, concurrency=2)
    with serving(demo) as url:
        yield url, demo


@contextlib.contextmanager
def serving(demo, **launch):
    """``demo`` served on a free port of 127.0.0.1 (``launch``: more ``launch()`` arguments);
    yields its URL and closes it after."""
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="session")
def app_serving():
    """:func:`serving`, for test modules that launch an app of their own."""
    return serving


@pytest.fixture(scope="session")
def tiny_faceanet() -> dict:
    """The Personaliser settings of the tiny inpainting bundle (one tuning step, 64 px)."""
    return {"tune_steps": 1, "resolution": 64, "overrides": TINY_FACEANET}


#: the tiny bundles of the Generate (FastFace), Group (FPGA) and Restore (DIIR) tabs
METHOD_KINDS = ("sdxl", "sdxl-distilled", "faceid-plus-v2", "arcface", "clip-vision", "fpga")


@pytest.fixture(scope="session")
def method_bundles(tmp_path_factory) -> dict[str, Path]:
    """kind -> folder of its tiny bundle (written once per session); ``cache``: FastFace's."""
    import os

    from instantportrait.tiny import write_tiny

    root = tmp_path_factory.mktemp("app_methods")
    bundles = {kind: write_tiny(root / kind, kind) for kind in METHOD_KINDS}
    bundles["restore"] = write_tiny(root / "restore", "restore")
    bundles["inpaint"] = write_tiny(root / "inpaint", "inpaint")
    bundles["cache"] = root / "cache"
    os.environ.setdefault("INSTANTPORTRAIT_CACHE", str(bundles["cache"]))
    return bundles


#: FaceA-Net's tuning on the tiny inpainting model: a small LoRA
TINY_FACEANET = {"model": {"lora_rank": 4, "lora_alpha": 4.0}}


def method_registry(tiny_model_dir, bundles, **kwargs):
    """A registry with every tab's model from the tiny bundles (FastFace: Turbo family)."""
    from instantportrait.app import ModelRegistry

    return ModelRegistry(
        edit_model=str(tiny_model_dir),
        fastface_model="turbo",
        fastface={
            "face_model": str(bundles["arcface"] / "arcface.safetensors"),
            "base": str(bundles["sdxl"]),
            "distilled": str(bundles["sdxl-distilled"]),
            "ip_adapter": str(bundles["faceid-plus-v2"]),
            "image_encoder": str(bundles["clip-vision"]),
        },
        fpga_model=str(bundles["fpga"]),
        restore_model=str(bundles["restore"]),
        faceanet_base=str(bundles["inpaint"]),
        faceanet={"tune_steps": 1, "resolution": 64, "overrides": TINY_FACEANET},
        **kwargs,
    )


@pytest.fixture(scope="session")
def methods(tiny_model_dir, method_bundles):
    """The registry of the method tests, its models loaded once per session."""
    return method_registry(tiny_model_dir, method_bundles)


@pytest.fixture(scope="session")
def two_person_pose(two_people_pose) -> Path:
    """OpenPose keypoints of two people on a 64x64 canvas (heads at x=16 and x=44)."""
    return two_people_pose
