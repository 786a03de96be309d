"""The Generate (FastFace), Group (FPGA) and Restore (DIIR) operations on tiny bundles."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instantportrait.app import methods as ops
from instantportrait.app.models import ModelRegistry
from instantportrait.errors import InputError


def test_generate_fastface_gives_an_image_of_the_resolution(methods, astronaut_path):
    res = ops.generate_fastface(
        methods.get("fastface"), astronaut_path, "a portrait in a garden", steps=1, resolution=32
    )
    assert res.image.size == (32, 32) and "turbo/fastface-am1" in res.notes[0]
    with pytest.raises(InputError, match="preset 'nope'"):
        ops.generate_fastface(methods.get("fastface"), astronaut_path, "x", preset="nope")


def test_group_with_two_identities_follows_the_pose(methods, astronaut_path, two_person_pose):
    faces = [astronaut_path, astronaut_path]
    res = ops.generate_group(methods.get("fpga"), faces, two_person_pose, "two people", steps=1)
    assert res.image.size == (64, 64) and res.notes[0].startswith("2 identities")
    cond, masks = ops.group_condition(two_person_pose, 2)
    assert masks.shape == (2, 64, 64)
    assert masks[0, 13, 16] == 1 and masks[1, 13, 44] == 1  # identity 1: the leftmost person
    with pytest.raises(InputError, match="one mask per identity"):
        ops.group_condition(cond, 2)  # a pose image has no keypoints
    with pytest.raises(InputError, match="1 to 4"):
        ops.generate_group(methods.get("fpga"), [], two_person_pose, "x", steps=1)


def test_group_tab_also_runs_a_merged_repcontrolnet(tmp_path, astronaut_path, two_person_pose):
    pytest.importorskip("dlib")
    import torch

    from instantportrait.app.models import load_fpga_pipeline
    from instantportrait.tiny import write_tiny

    pipe = load_fpga_pipeline(
        str(write_tiny(tmp_path / "rep", "repcontrolnet")), torch.device("cpu"), torch.float32
    )
    assert type(pipe).__name__ == "RepControlNetPipeline"
    faces = [astronaut_path, astronaut_path]
    res = ops.generate_group(pipe, faces, two_person_pose, "two people", steps=1)
    assert res.image.size == (64, 64) and res.notes[0].startswith("2 identities")


def test_restore_passes_a_face_free_image_through_with_a_note(methods):
    flat = Image.new("RGB", (64, 48), (120, 130, 140))
    res = ops.restore_faces(methods.get("restore"), flat, steps=1)
    assert np.array_equal(np.asarray(res.image), np.asarray(flat))
    assert "no face found" in res.notes[0]


def test_restore_keeps_the_size_of_an_image_with_a_small_face(methods, astronaut_path):
    small = Image.open(astronaut_path).convert("RGB").resize((128, 128))
    res = ops.restore_faces(methods.get("restore"), small, astronaut_path, steps=1)
    assert res.image.size == (128, 128)
    assert methods.slots["restore"].get(methods.device, methods.dtype).num_inference_steps == 30


@pytest.mark.parametrize(
    ("method", "option"),
    [
        ("fastface", "--fastface-model"),
        ("faceanet", "--faceanet-base"),
        ("fpga", "--fpga-model"),
        ("restore", "--restore-model"),
    ],
)
def test_registry_names_the_missing_option(method, option):
    """The operator's start-up line names the option; the web user's message does not (it
    is no use to them), nor any path."""
    registry = ModelRegistry()
    assert option in registry.status()[method]
    assert registry.page_status()[method] == "not available on this server"
    with pytest.raises(InputError, match="not available on this server") as info:
        registry.get(method)
    assert "--" not in str(info.value)


def test_restore_slot_takes_the_face_parser_and_codeformer(method_bundles, tmp_path):
    """`app --restore-face-parser/--restore-codeformer`: the Restore tab's restorer uses them."""
    import functools

    import torch

    from instantportrait.app.models import load_restorer
    from instantportrait.faces.parsing import FaceParser
    from instantportrait.restoration.codeformer import CodeFormerEnhancer
    from instantportrait.tiny import write_tiny

    registry = ModelRegistry(
        restore_model=str(method_bundles["restore"]),
        restore={
            "face_parser": str(write_tiny(tmp_path / "fp", "face-parser")),
            "codeformer": str(write_tiny(tmp_path / "cf", "codeformer")),
            "codeformer_fidelity": 0.7,
        },
    )
    restorer = registry.get("restore")
    assert isinstance(restorer.mask_fn, FaceParser)
    assert isinstance(restorer.enhancer, CodeFormerEnhancer) and restorer.enhancer.fidelity == 0.7
    plain = functools.partial(load_restorer, str(method_bundles["restore"]))
    bare = plain(torch.device("cpu"), torch.float32)
    assert bare.mask_fn is None and bare.enhancer is None
