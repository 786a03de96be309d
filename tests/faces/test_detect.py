"""Detection and landmarks with dlib on the bundled portraits: inputs, order, retries, errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("dlib")

from instantportrait.errors import InputError  # noqa: E402
from instantportrait.faces.align import DLIB_5_FROM_68  # noqa: E402
from instantportrait.faces.detect import FaceDetections, NoFaceFoundError, detect  # noqa: E402


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def _tile(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), "gray")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def test_astronaut_one_face_with_landmarks(astronaut_faces):
    d = astronaut_faces
    assert isinstance(d, FaceDetections) and len(d) == 1
    assert d.boxes.shape == (1, 4) and d.boxes.dtype == torch.float32
    x0, y0, x1, y1 = d.boxes[0].tolist()
    # The face is in the upper middle of the 512x512 image, about 90 px wide.
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200 and 60 < x1 - x0 < 140
    assert d.scores[0] > 0.5
    assert d.landmarks5.shape == (1, 5, 2) and d.landmarks68.shape == (1, 68, 2)
    lm68 = d.landmarks68[0]
    assert (lm68[:, 0] > x0 - 20).all() and (lm68[:, 0] < x1 + 20).all()
    # dlib's 5 points are the eye corners and the nose base of the 68-point layout.
    assert (d.landmarks5[0] - lm68[list(DLIB_5_FROM_68)]).norm(dim=-1).max() < 6
    assert d.image_size == (512, 512)
    assert json.loads(json.dumps(d.to_dict()))["faces"][0]["landmarks68"][0]


def test_every_input_type_gives_the_same_face(grace_hopper_path, grace_hopper_half, to_tensor):
    img = grace_hopper_half
    arr = np.array(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    sources = [
        img,
        arr,
        arr.astype(np.float32) / 255.0,
        to_tensor(img)[0],
        torch.from_numpy(arr).permute(2, 0, 1).contiguous(),
        buf.getvalue(),
    ]
    boxes = [detect(s, landmarks=False).boxes[0] for s in sources]
    for b in boxes[1:]:
        assert torch.equal(b, boxes[0])
    # A path works too (the full-size file: same face, twice the size).
    full = detect(grace_hopper_path, landmarks=5)
    assert full.landmarks68 is None and full.landmarks5.shape == (1, 5, 2)
    assert _iou(full.boxes[0] / 2, boxes[0]) > 0.6


def test_batches_list_and_4d(astronaut_half, grace_hopper_half, to_tensor):
    out = detect([astronaut_half, grace_hopper_half], landmarks=False)
    assert isinstance(out, list) and [len(d) for d in out] == [1, 1]
    batch = torch.cat([to_tensor(astronaut_half), to_tensor(astronaut_half)])
    out4 = detect(batch, landmarks=False)
    assert len(out4) == 2 and torch.equal(out4[0].boxes, out4[1].boxes)
    assert torch.equal(out4[0].boxes, out[0].boxes)
    assert "[1]" in out4[1].name


def test_two_portraits_side_by_side_stable_order(astronaut_half, grace_hopper_half):
    ag = detect(_tile(astronaut_half, grace_hopper_half), select="all", landmarks=68)
    ga = detect(_tile(grace_hopper_half, astronaut_half), select="all", landmarks=68)
    assert len(ag) == 2 and len(ga) == 2
    # Left to right: the boxes are ordered by centre x in both layouts.
    for d in (ag, ga):
        cx = (d.boxes[:, 0] + d.boxes[:, 2]) / 2
        assert cx[0] < cx[1]
        assert d.landmarks68.shape == (2, 68, 2)
    w = astronaut_half.width
    assert ag.boxes[0, 2] <= w and ag.boxes[1, 0] >= w  # astronaut left, Grace Hopper right
    assert ga.boxes[0, 2] <= grace_hopper_half.width and ga.boxes[1, 0] >= grace_hopper_half.width

    # The same faces whichever side they are on (centres shifted by the tile offset; HOG's
    # box sizes vary with the image, its centres hardly).
    def centre(box):
        return torch.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])

    gw = grace_hopper_half.width
    assert (centre(ag.boxes[0]) + torch.tensor([gw, 0]) - centre(ga.boxes[1])).norm() < 8
    assert (centre(ag.boxes[1]) - torch.tensor([w, 0]) - centre(ga.boxes[0])).norm() < 8
    # "largest" is Grace Hopper's face (the larger one), a count keeps the k largest.
    largest = detect(_tile(astronaut_half, grace_hopper_half), landmarks=False)
    assert len(largest) == 1 and torch.equal(largest.boxes[0], ag.boxes[1])
    one = detect(_tile(astronaut_half, grace_hopper_half), select=1, landmarks=False)
    assert torch.equal(one.boxes, largest.boxes)


def test_small_face_found_by_retrying_with_more_upsampling(astronaut_half):
    d = detect(astronaut_half, upsample=0, landmarks=False)
    assert len(d) == 1 and d.upsample == 1
    with pytest.raises(NoFaceFoundError):
        detect(astronaut_half, upsample=0, max_upsample=0, landmarks=False)


@pytest.mark.parametrize("kind", ["flat", "coffee"])
def test_face_free_images_raise(kind):
    if kind == "flat":
        image = Image.new("RGB", (160, 120), (120, 160, 200))
    else:
        data = pytest.importorskip("skimage.data")
        image = data.coffee()  # a cup of coffee: checked to hold no face at upsampling 0-2
    with pytest.raises(NoFaceFoundError, match="no face found") as info:
        detect(image, landmarks=False)
    assert isinstance(info.value, InputError)
    assert "160x120" in str(info.value) or "(400, 600, 3)" in str(info.value)
    empty = detect(image, raise_if_none=False)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.landmarks68.shape == (0, 68, 2)


def test_batch_error_names_the_image(astronaut_half):
    flat = Image.new("RGB", (64, 64), "white")
    with pytest.raises(NoFaceFoundError, match=r"images\[1\]"):
        detect([astronaut_half, flat], landmarks=False)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        detect(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="bad.png"):
        detect(bad)
    with pytest.raises(ValueError, match="method"):
        detect(Image.new("RGB", (8, 8)), method="retinaface")
    with pytest.raises(ValueError, match="select"):
        detect(Image.new("RGB", (64, 64)), select="biggest", raise_if_none=False)


def test_mmod_detector_agrees_with_hog(grace_hopper_half):
    hog = detect(grace_hopper_half, landmarks=False)
    mmod = detect(grace_hopper_half, method="mmod", upsample=0, landmarks=5)
    assert mmod.method == "mmod" and len(mmod) == 1 and mmod.scores[0] > 0
    assert _iou(hog.boxes[0], mmod.boxes[0]) > 0.5
    assert mmod.landmarks5.shape == (1, 5, 2)
