"""``data build-portraits``: the portrait dataset from a photo folder, rejections by reason."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from instantportrait.cli import main
from instantportrait.data.portraits import open_portrait_source, pack_portrait_shards

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, astronaut_path, grace_hopper_path):
    src = tmp_path_factory.mktemp("photos")
    astro = Image.open(astronaut_path).convert("RGB").resize((256, 256))
    astro.save(src / "a_good.png")
    (src / "a_good.txt").write_text("an astronaut in a white suit")
    skeleton = {"people": [{"pose_keypoints_2d": [v for i in range(18) for v in (8 * i, 9, 1)]}]}
    (src / "a_good.json").write_text(json.dumps(skeleton))
    astro.save(src / "b_duplicate.png")
    grace = Image.open(grace_hopper_path).convert("RGB")
    grace = grace.resize((256 * grace.width // grace.height, 256))
    pair = Image.new("RGB", (astro.width + grace.width, 256))
    pair.paste(astro, (0, 0))
    pair.paste(grace, (astro.width, 0))
    pair.save(src / "c_two_faces.png")
    gradient = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (128, 1))
    Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(src / "d_no_face.png")
    (src / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    astro.resize((48, 48)).save(src / "f_tiny.png")
    grace.save(src / "g_no_caption.png")
    return src


def test_build_counts_each_rejection_by_reason(photo_folder, tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(["data", "build-portraits", str(photo_folder), str(out), "--min-side", "64",
                 "--min-face", "32", "--face-template", "dlib"])  # fmt: skip
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("7 photos, 1 kept, 6 rejected")
    meta = json.loads((out / "dataset.json").read_text())["report"]
    assert meta == {"seen": 7, "kept": 1, "unreadable": 1, "too_small": 1, "duplicate": 1,
                    "no_face": 1, "multiple_faces": 1, "no_caption": 1}  # fmt: skip
    reasons = {
        json.loads(r)["file"].rsplit("/", 1)[-1]: json.loads(r)["reason"]
        for r in (out / "rejected.jsonl").read_text().splitlines()
    }
    assert reasons == {"b_duplicate.png": "duplicate", "c_two_faces.png": "multiple_faces",
                       "d_no_face.png": "no_face", "e_broken.png": "unreadable",
                       "f_tiny.png": "too_small", "g_no_caption.png": "no_caption"}  # fmt: skip

    src = open_portrait_source(out)
    (ex,) = [src[i] for i in range(len(src))]
    assert ex.caption == "an astronaut in a white suit"
    assert ex.landmarks.shape == (68, 2) and ex.keypoints.shape == (1, 18, 3)
    x0, y0, x1, y1 = ex.face_box
    assert x0 <= ex.landmarks[:, 0].mean() <= x1 and y0 <= ex.landmarks[:, 1].mean() <= y1
    face = Image.open(io.BytesIO(ex.face_bytes))
    assert face.size == (224, 224)
    mask = np.asarray(Image.open(io.BytesIO(ex.mask_bytes)))
    assert mask.shape == (256, 256) and mask[int((y0 + y1) / 2), int((x0 + x1) / 2)] == 255
    assert mask[5, 5] == 0

    shards = pack_portrait_shards(out, tmp_path / "shards", shard_size=1)
    assert len(shards) == 1
    again = open_portrait_source(tmp_path / "shards")[0]
    assert again.caption == ex.caption and again.face_bytes == ex.face_bytes
    np.testing.assert_allclose(again.landmarks, ex.landmarks)
    capsys.readouterr()
    for folder in (out, tmp_path / "shards"):  # `data check` accepts what build/pack wrote
        assert main(["data", "check", str(folder)]) == 0
        assert "1 portraits, 1 good, 0 bad" in capsys.readouterr().out


def test_build_refuses_an_existing_output(photo_folder, tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "x").write_text("keep me")
    assert main(["data", "build-portraits", str(photo_folder), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "x").read_text() == "keep me"
