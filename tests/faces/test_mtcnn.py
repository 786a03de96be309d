"""MTCNN with facenet-pytorch's weights, against facenet-pytorch's own outputs.

The fixture (``data/mtcnn_golden.json`` and the 160-px crops ``data/mtcnn_golden_*.png``) was
computed once by facenet-pytorch 2.6.0 in a venv of its own (torch 2.14.1, torchvision 0.29.1;
``data/make_mtcnn_golden.py`` regenerates it). Targets: points and boxes within 0.01 px, the
crop byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from instantportrait.faces.base import IdentityEmbedder

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "mtcnn_golden.json").read_text())


@pytest.fixture(scope="module")
def mtcnn():
    from instantportrait.faces.mtcnn import MtcnnDetector

    return MtcnnDetector.load()


@pytest.fixture(scope="module")
def photos(astronaut, grace_hopper):
    return {"astronaut": np.array(astronaut), "grace_hopper": np.array(grace_hopper)}


def _largest_first(boxes, *arrays):
    order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
    return [boxes[order], *(a[order] for a in arrays)]


@pytest.mark.parity
def test_boxes_points_probabilities_match_facenet_pytorch(mtcnn, photos):
    for name, img in photos.items():
        want = GOLDEN["photos"][name]
        boxes, probs, points = _largest_first(*mtcnn(img))
        assert boxes.shape == (len(want["boxes"]), 4), name
        np.testing.assert_allclose(boxes, want["boxes"], atol=0.01, err_msg=name)
        np.testing.assert_allclose(points, want["points"], atol=0.01, err_msg=name)
        np.testing.assert_allclose(probs, want["probs"], atol=1e-5, err_msg=name)


def _assert_crop_equal(got: np.ndarray, want: np.ndarray, name: str) -> None:
    """Byte for byte under the fixture's Pillow; Pillow 13 resizes down differently (1 level)."""
    if PIL.__version__ == GOLDEN["pillow"]:
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        assert np.abs(got.astype(int) - want).max() <= 1, name


@pytest.mark.parity
def test_facenet_crop_matches_extract_face(photos):
    from instantportrait.faces.mtcnn import facenet_crop

    for name, img in photos.items():
        for i, box in enumerate(GOLDEN["photos"][name]["boxes"]):
            want = np.array(Image.open(DATA / f"mtcnn_golden_{name}_{i}.png"))
            _assert_crop_equal(facenet_crop(img, np.array(box)), want, name)


class CropRecorder(IdentityEmbedder):
    """Keeps the crops it is given (what FaceNet would see)."""

    template, input_size, embedding_dim = "facenet", 160, 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        self.seen.append(crops)
        return crops.mean(dim=(2, 3))


@pytest.mark.parity
def test_reference_facenet_path_of_the_analyzer(photos):
    """detect(mtcnn) -> box crop: the crop FaceNet sees is facenet-pytorch's
    ``MTCNN(post_process=False)(img)``; the points are MTCNN's."""
    from instantportrait.faces.analyzer import FaceAnalyzer

    recorder = CropRecorder()
    analyzer = FaceAnalyzer(detector="mtcnn", embedder=recorder, reference=True)
    assert analyzer.template == "facenet"
    for name, img in photos.items():
        faces = analyzer.analyze(img)
        assert len(faces) == 1, name
        want = np.array(Image.open(DATA / f"mtcnn_golden_{name}_0.png"))
        got = (recorder.seen[-1][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        _assert_crop_equal(got, want, name)
        np.testing.assert_allclose(
            faces[0].keypoints.numpy(), GOLDEN["photos"][name]["points"][0], atol=0.01
        )


def test_shipped_weights_are_facenet_pytorchs():
    """The safetensors holds exactly the three networks' parameters (strict load)."""
    from safetensors.torch import load_file

    from instantportrait.faces.mtcnn import MTCNN_WEIGHTS, ONet, PNet, RNet

    state = load_file(str(MTCNN_WEIGHTS))
    expected = {
        f"{p}.{k}" for p, net in (("pnet", PNet()), ("rnet", RNet()), ("onet", ONet()))
        for k in net.state_dict()
    }  # fmt: skip
    assert set(state) == expected
    licence = MTCNN_WEIGHTS.parent / "MTCNN_LICENSE.md"
    assert licence.read_text().startswith("MIT License")


def test_detect_api_gives_mtcnn_keypoints(grace_hopper):
    from instantportrait.faces.detect import detect

    det = detect(grace_hopper, method="mtcnn", landmarks="keypoints")
    assert det.method == "mtcnn" and len(det) == 1
    assert det.keypoints.shape == (1, 5, 2)
    # left eye left of right eye, nose between, mouth below the eyes
    (le, re, nose, ml, mr) = det.keypoints[0].tolist()
    assert le[0] < nose[0] < re[0] and ml[1] > le[1] and mr[1] > re[1]
    assert det.landmarks5 is None  # "keypoints" asks for no dlib shapes


def test_bad_weights_file_is_one_line(tmp_path):
    from instantportrait.errors import InputError, ModelNotFoundError
    from instantportrait.faces.mtcnn import MtcnnDetector

    with pytest.raises(ModelNotFoundError, match="MTCNN weights not found"):
        MtcnnDetector.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot read MTCNN weights"):
        MtcnnDetector.load(bad)


def test_cli_detect_with_mtcnn_and_a_missing_scrfd(capsys, astronaut_path, tmp_path):
    from instantportrait.cli import main

    code = main(["faces", "detect", str(astronaut_path), "--detector", "mtcnn", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    (face,) = json.loads(out.out)[0]["faces"]
    want = GOLDEN["photos"]["astronaut"]["points"][0]
    np.testing.assert_allclose(face["keypoints"], want, atol=0.01)
    code = main(["faces", "detect", str(astronaut_path), "--detector", "scrfd"])
    err = capsys.readouterr().err
    assert code == 2 and "--detector-weights" in err and len(err.strip().splitlines()) == 1
    missing = tmp_path / "det_10g.onnx"
    argv = ["faces", "detect", str(astronaut_path), "--detector-weights", str(missing)]
    code = main([*argv, "--detector", "scrfd"])
    err = capsys.readouterr().err
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
