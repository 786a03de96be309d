"""The ComfyUI node pack, called as ComfyUI calls it (classes, INPUT_TYPES, FUNCTION)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pack():
    sys.path.insert(0, str(ROOT))
    try:
        yield importlib.import_module("comfyui")
    finally:
        sys.path.remove(str(ROOT))


def test_registry_layout(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        assert "required" in spec
        assert callable(getattr(cls(), cls.FUNCTION))
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.CATEGORY == "InstantPortrait"


def test_edit_node_equals_the_pipeline(pack, tiny_model_dir, astronaut_path):
    nodes = pack.NODE_CLASS_MAPPINGS
    loader, editor = nodes["InstantPortraitLoader"](), nodes["InstantPortraitEdit"]()
    (pipe,) = getattr(loader, loader.FUNCTION)(str(tiny_model_dir), "cpu", "float32")
    portrait = Image.open(astronaut_path).convert("RGB").resize((64, 64))
    batch = torch.from_numpy(np.asarray(portrait, dtype=np.float32) / 255.0)[None]
    (out,) = getattr(editor, editor.FUNCTION)(
        pipe, batch, "a red\nhat", steps=0, style_boost=1, seed=5, resolution=64
    )
    assert out.shape == (1, 64, 64, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    direct = pipe(
        prompt="a red hat",
        image=portrait,
        resolution=64,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    np.testing.assert_allclose(out[0].numpy() * 255.0, np.asarray(direct), atol=1e-3)


def _batch(*images):
    return torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) / 255.0 for i in images]))


def _call(pack, name, *args, **kwargs):
    node = pack.NODE_CLASS_MAPPINGS[name]()
    return getattr(node, node.FUNCTION)(*args, **kwargs)


def test_fastface_nodes(pack, method_bundles, astronaut_path):
    b = method_bundles
    (model,) = _call(
        pack,
        "InstantPortraitFastFaceLoader",
        "turbo",
        str(b["arcface"] / "arcface.safetensors"),
        "cpu",
        "float32",
        base=str(b["sdxl"]),
        distilled=str(b["sdxl-distilled"]),
        ip_adapter=str(b["faceid-plus-v2"]),
        image_encoder=str(b["clip-vision"]),
    )
    face = _batch(Image.open(astronaut_path).convert("RGB"))
    (out,) = _call(pack, "InstantPortraitFastFaceGenerate", model, face, "a portrait", steps=1,
                   resolution=32)  # fmt: skip
    assert out.shape == (1, 32, 32, 3) and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0


def test_fpga_node_two_identities_from_keypoints_text(
    pack, method_bundles, astronaut_path, two_person_pose
):
    (pipe,) = _call(
        pack, "InstantPortraitFPGALoader", str(method_bundles["fpga"]), "cpu", "float32"
    )
    face = Image.open(astronaut_path).convert("RGB").resize((256, 256))
    (out,) = _call(pack, "InstantPortraitFPGAGenerate", pipe, _batch(face, face), "two people",
                   two_person_pose.read_text(), steps=1)  # fmt: skip
    assert out.shape == (1, 64, 64, 3)


def test_diir_node_leaves_a_face_free_batch_unchanged(pack, method_bundles):
    (restorer,) = _call(
        pack, "InstantPortraitDIIRLoader", str(method_bundles["restore"]), "cpu", "float32"
    )
    flat = Image.new("RGB", (40, 32), (120, 130, 140))
    batch = _batch(flat, flat)
    (out,) = _call(pack, "InstantPortraitDIIRRestore", restorer, batch, steps=1)
    assert out.shape == (2, 32, 40, 3)
    np.testing.assert_allclose(out.numpy(), batch.numpy(), atol=1e-6)
