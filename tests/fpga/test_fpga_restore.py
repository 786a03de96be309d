"""``generate --method fpga --restore``: each face restored toward its own person's identity,
and the messages of ``generate --method fpga`` name what the user typed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main
from instantportrait.faces.detect import FaceDetections
from instantportrait.restoration.restorer import match_faces

# two_people_pose: heads at x = 16 (left) and x = 44 (right), y about 12-14, on 64x64
LEFT, RIGHT, NOBODY = (11.0, 8.0, 21.0, 18.0), (39.0, 8.0, 49.0, 18.0), (25.0, 40.0, 35.0, 50.0)


def _ring(box):
    x0, y0, x1, y1 = box
    a = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 3
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def test_match_faces_takes_the_region_covering_most_of_the_box():
    regions = np.zeros((2, 20, 40))
    regions[0, :, :12] = 1  # person 1: x < 12
    regions[1, :, 10:30] = 1  # person 2: 10 <= x < 30
    boxes = [(0, 0, 10, 10), (8, 0, 18, 10), (32, 0, 40, 10), (9, 0, 13, 10)]
    # box 2 covers 4 columns of person 1 and 8 of person 2; box 3 touches nobody; box 4 ties
    # 3 columns (9, 10, 11) against 3 (10, 11, 12): the earlier region
    assert match_faces(boxes, regions) == [0, 1, None, 0]


@pytest.fixture()
def spy_restore(monkeypatch):
    """Three small faces in every generated image (left person, right person, nobody's
    place); the DIIR pipeline records the F_id it gets per face and returns the crops."""
    import importlib

    from instantportrait.pipelines.restore import DIIRPipeline

    detect_module = importlib.import_module("instantportrait.faces.detect")

    real = detect_module.detect
    boxes = [LEFT, RIGHT, NOBODY]

    def fake_detect(image, *args, select="largest", **kw):
        if select != "all":  # the id images' own check and alignment: the real detector
            return real(image, *args, select=select, **kw)
        return FaceDetections(
            boxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.ones(3),
            landmarks68=torch.tensor(np.stack([_ring(b) for b in boxes]), dtype=torch.float32),
            image_size=image.size,
        )

    received = []

    def spy(self, prompt, crops, conds, masks, id_embeds=None, **kw):
        received.append(id_embeds.detach().clone())
        return SimpleNamespace(images=list(crops))

    monkeypatch.setattr(detect_module, "detect", fake_detect)
    monkeypatch.setattr(DIIRPipeline, "__call__", spy)
    return received


@pytest.mark.parametrize("order", [None, "2,1"])
def test_generate_restore_gives_each_face_its_own_persons_identity(
    order, spy_restore, tiny_fpga, two_people_pose, astronaut_path, grace_hopper_path, tmp_path,
    capsys,
):  # fmt: skip
    """Two distinguishable identities: the face at each person's head gets that person's F_id
    (not swapped, not dropped, not the face's own), the face at nobody's head is left alone."""
    pytest.importorskip("dlib")
    from instantportrait.pipelines.fpga import FPGAPipeline

    expected = FPGAPipeline.from_pretrained(str(tiny_fpga)).encode_identity(
        [Image.open(astronaut_path), Image.open(grace_hopper_path)]
    )
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # distinguishable
    argv = ["generate", "--method", "fpga", "--model", str(tiny_fpga),
            "--id-image", str(astronaut_path), "--id-image", str(grace_hopper_path),
            "--pose", str(two_people_pose), "--prompt", "two people", "--fpga-steps", "1",
            "--restore", "--restore-model", str(tiny_fpga), "-o", str(tmp_path / "o")]  # fmt: skip
    if order:
        argv += ["--id-people", order]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert len(spy_restore) == 1  # one image, one batch
    got = spy_restore[0]
    assert got.shape[0] == 2  # two faces restored: the one at nobody's head is not
    # default: identities left to right (astronaut left); --id-people 2,1: astronaut right
    left, right = (expected[0], expected[1]) if order is None else (expected[1], expected[0])
    torch.testing.assert_close(got[0], left)
    torch.testing.assert_close(got[1], right)
    assert "0000.png: 1 small face(s) at (25, 40, 35, 50) lie in no person's face region" in err
    assert "0000.png: restored 2 face(s)" in err and "output 0" not in err


def test_generate_restore_one_identity_owns_every_face(
    spy_restore, tiny_fpga, astronaut_path, tmp_path
):
    """One identity and no masks: it was generated everywhere, so every face takes it."""
    pytest.importorskip("dlib")
    from instantportrait.pipelines.fpga import FPGAPipeline

    expected = FPGAPipeline.from_pretrained(str(tiny_fpga)).encode_identity(
        [Image.open(astronaut_path)]
    )
    pose = tmp_path / "pose.png"
    Image.new("RGB", (64, 64)).save(pose)
    argv = ["generate", "--method", "fpga", "--model", str(tiny_fpga),
            "--id-image", str(astronaut_path), "--pose", str(pose), "--prompt", "x",
            "--fpga-steps", "1", "--restore", "--restore-model", str(tiny_fpga),
            "-o", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0
    got = spy_restore[0]
    assert got.shape[0] == 3
    for row in got:
        torch.testing.assert_close(row, expected[0])


def _fpga(tiny_fpga, tmp_path, *extra):
    return ["generate", "--method", "fpga", "--model", str(tiny_fpga), "--prompt", "x",
            "-o", str(tmp_path / "o"), *extra]  # fmt: skip


def test_messages_name_what_the_user_typed_once(
    tiny_fpga, two_people_pose, astronaut_path, tmp_path, capsys, monkeypatch
):
    import instantportrait.pipelines.fpga_family as family

    def no_loading(*a, **k):
        raise AssertionError("the model loaded before the inputs were checked")

    monkeypatch.setattr(family, "load_fpga_family", no_loading)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(blank)
    pose = ["--pose", str(two_people_pose)]
    cases = [
        # an id image without a face: the flag typed and the file, before the model loads
        (["--id-image", str(blank), *pose], f"--id-image {blank}: no face found"),
        (["--fpga-id-image", str(blank), *pose], f"--fpga-id-image {blank}: no face found"),
        # --id-people: the person the pose lacks, the count it should have
        (
            [
                "--id-image",
                str(astronaut_path),
                "--id-image",
                str(astronaut_path),
                *pose,
                "--id-people",
                "3,1",
            ],
            f"--id-people 3,1: person 3, but --pose {two_people_pose} has 2 people",
        ),  # fmt: skip
        (
            [
                "--id-image",
                str(astronaut_path),
                "--id-image",
                str(astronaut_path),
                *pose,
                "--id-people",
                "1",
            ],
            "--id-people 1: 1 person number(s) for 2 --id-image image(s); give one per "
            "--id-image, in order",
        ),  # fmt: skip
        (
            [
                "--id-image",
                str(astronaut_path),
                "--id-image",
                str(astronaut_path),
                *pose,
                "--id-people",
                "1,1",
            ],
            "--id-people 1,1: each person can take one identity only",
        ),  # fmt: skip
    ]
    for extra, said in cases:
        assert main(_fpga(tiny_fpga, tmp_path, *extra)) == 2
        assert capsys.readouterr().err.strip() == f"error: {said}"
    # a keypoints file with a malformed person: one line naming --pose and the file, once
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 10}]}))
    argv = _fpga(tiny_fpga, tmp_path, "--id-image", str(astronaut_path), "--pose", str(bad))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --pose {bad}: person 0 has 10 numbers, not 17/18/25 points"
