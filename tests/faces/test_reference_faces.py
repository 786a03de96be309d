"""The reference path of the face stack without the reference packages: SCRFD's decoder,
the detector selection, OpenCV-exact resampling and ``norm_crop``, checked by hand.

(``test_parity.py`` compares the same code with insightface and OpenCV themselves.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instantportrait.errors import InputError, ModelNotFoundError
from instantportrait.faces.align import _ARCFACE_112, keypoints_from_68, norm_crop
from instantportrait.faces.base import IdentityEmbedder
from instantportrait.faces.detectors import FaceDetectorConfig, insightface_pack
from instantportrait.faces.resample import resize_linear, warp_affine
from instantportrait.faces.scrfd import (
    anchor_centres,
    decode_outputs,
    distance_to_box,
    distance_to_keypoints,
    letterbox,
    nms,
)


def test_anchor_centres_are_row_major_with_repeated_anchors():
    got = anchor_centres(2, 3, 8, 2)
    want = [(x * 8, y * 8) for y in range(2) for x in range(3) for _ in range(2)]
    np.testing.assert_array_equal(got, want)


def test_distances_to_box_and_keypoints_by_hand():
    centre = np.array([[10.0, 20.0]])
    np.testing.assert_array_equal(
        distance_to_box(centre, np.array([[1.0, 2.0, 3.0, 4.0]])), [[9, 18, 13, 24]]
    )
    kps = distance_to_keypoints(centre, np.array([[1.0, -1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(kps, [[[11, 19], [12, 23]]])


def test_nms_uses_inclusive_areas_and_keeps_the_best():
    boxes = np.array([[1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    # IoU of the first two: 10*10 / (121 + 121 - 100) = 0.70 > 0.4
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [1, 2])
    # at 0.75 both stay, best first
    np.testing.assert_array_equal(nms(boxes, scores, 0.75), [1, 0, 2])


def _outputs(with_kps: bool, size: int = 64):
    """SCRFD outputs for a ``size`` canvas, all scores 0 but one anchor at stride 16."""
    outs = []
    for channels in (1, 4, 10)[: 3 if with_kps else 2]:
        for stride in (8, 16, 32):
            n = (size // stride) ** 2 * 2
            outs.append(np.zeros((n, channels), np.float32))
    # stride 16: row 1, column 2, second anchor
    i = (1 * (size // 16) + 2) * 2 + 1
    outs[1][i] = 0.9
    outs[4][i] = [1, 2, 3, 4]
    if with_kps:
        outs[7][i] = [0.5, 0.25, 1, 1, 0, 0, -1, 1, 2, -2]
    return outs


def test_decoder_by_hand():
    boxes, scores, kps = decode_outputs(_outputs(True), 64, 64, scale=2.0)
    # centre (x, y) = (2 * 16, 1 * 16); distances times the stride; divided by the scale
    np.testing.assert_allclose(boxes, [[(32 - 16) / 2, (16 - 32) / 2, (32 + 48) / 2, 80 / 2]])
    np.testing.assert_allclose(scores, [0.9])
    want = np.array([[0.5, 0.25], [1, 1], [0, 0], [-1, 1], [2, -2]]) * 16 + [32, 16]
    np.testing.assert_allclose(kps, [want / 2])
    boxes6, _, kps6 = decode_outputs(_outputs(False), 64, 64, scale=2.0)
    np.testing.assert_allclose(boxes6, boxes)
    assert kps6 is None
    # batched outputs (a leading axis of 1) decode the same
    batched = decode_outputs([o[None] for o in _outputs(True)], 64, 64, 2.0, batched=True)
    np.testing.assert_allclose(batched[2], kps)


def test_letterbox_keeps_the_aspect_at_the_top_left():
    img = np.full((50, 100, 3), 200, np.uint8)
    canvas, scale = letterbox(img, (640, 640))
    assert canvas.shape == (640, 640, 3) and scale == pytest.approx(6.4)
    assert canvas[:320].min() == 200 and canvas[320:].max() == 0


def test_resize_linear_by_hand():
    ramp = np.array([[0, 100]], np.uint8)
    # sample positions -0.25, 0.25, 0.75, 1.25: clamped at the borders
    np.testing.assert_array_equal(resize_linear(ramp, 4, 1), [[0, 25, 75, 100]])
    flat = np.full((7, 5, 3), 37, np.uint8)
    assert (resize_linear(flat, 13, 3) == 37).all()


def test_warp_affine_integer_shift_and_zero_border():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = warp_affine(img, np.array([[1, 0, 3], [0, 1, -2]], float), 30, 20)
    want = np.zeros_like(img)
    want[:18, 3:] = img[2:, :27]
    np.testing.assert_array_equal(out, want)


def test_norm_crop_of_the_template_is_the_identity():
    """At 224 insightface's template points are doubled (``p * 2``): a face whose keypoints
    sit on them is cropped as it is. The half-pixel rule ``(p + 0.5) * 2 - 0.5`` fails this."""
    rng = np.random.default_rng(1)
    for size in (112, 224):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        kps = _ARCFACE_112 * size / 112
        np.testing.assert_array_equal(norm_crop(img, kps, size), img)


def test_keypoints_from_68_are_eye_centres_nose_tip_mouth_corners():
    lm = torch.zeros(68, 2)
    lm[36:42] = torch.tensor([10.0, 50.0])
    lm[36, 0] = 4.0  # the left eye's centre moves by 1 (6 points)
    lm[42:48] = torch.tensor([30.0, 50.0])
    lm[30] = torch.tensor([20.0, 60.0])
    lm[48] = torch.tensor([12.0, 70.0])
    lm[54] = torch.tensor([28.0, 70.0])
    got = keypoints_from_68(lm)
    np.testing.assert_allclose(got, [[9, 50], [30, 50], [20, 60], [12, 70], [28, 70]])


def _touch(path):
    path.write_bytes(b"")
    return path


def test_detector_selection_from_options(tmp_path):
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    det = _touch(pack / "det_10g.onnx")
    rec = _touch(pack / "w600k_r50.onnx")
    assert insightface_pack(pack) == (det, rec)
    for face_model in (pack, rec):  # the folder, or its recogniser file
        config = FaceDetectorConfig.from_options(face_model=face_model)
        assert (config.name, config.weights) == ("scrfd", det)
    # an explicit detector wins over the folder's
    assert FaceDetectorConfig.from_options("mtcnn", face_model=pack).name == "mtcnn"
    lone = tmp_path / "lone"
    lone.mkdir()
    _touch(lone / "w600k_r50.onnx")
    assert FaceDetectorConfig.from_options(face_model=lone / "w600k_r50.onnx").name == "hog"
    with pytest.raises(ModelNotFoundError, match="--detector-weights"):
        FaceDetectorConfig.from_options("scrfd")
    with pytest.raises(ModelNotFoundError, match="not found"):
        FaceDetectorConfig("scrfd", tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="detector: one of"):
        FaceDetectorConfig("retinaface")
    with pytest.raises(InputError, match="upsample"):
        FaceDetectorConfig("hog", upsample=9)


def test_detector_spec_round_trip(tmp_path):
    onnx = _touch(tmp_path / "scrfd_10g_bnkps.onnx")
    for config in (
        FaceDetectorConfig(),
        FaceDetectorConfig("mtcnn"),
        FaceDetectorConfig("scrfd", onnx),
    ):
        assert FaceDetectorConfig.from_spec(config.spec) == config
    assert FaceDetectorConfig.from_spec(str(onnx)) == FaceDetectorConfig("scrfd", onnx)
    assert FaceDetectorConfig.from_spec(str(tmp_path)).weights == onnx
    assert FaceDetectorConfig.from_spec(None).name == "hog"
    with pytest.raises(InputError, match="NAME:FILE"):
        FaceDetectorConfig.from_spec("nonsense")


def _pb(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (lengths < 128)."""
    return bytes([field << 3 | 2, len(payload)]) + payload


def _onnx_bytes(names: list[str]) -> bytes:
    nodes = b"".join(_pb(1, _pb(3, n.encode()) + _pb(4, b"Op")) for n in names)
    return bytes([1 << 3 | 0, 7]) + _pb(2, b"producer") + _pb(7, nodes + _pb(2, b"graph"))


def test_onnx_node_names_and_builtin_normalisation(tmp_path):
    from instantportrait.faces.arcface import has_builtin_normalisation, onnx_node_names

    mx = tmp_path / "mx.onnx"
    mx.write_bytes(_onnx_bytes(["data_const", "_minus0", "_mul0", "conv0"]))
    assert onnx_node_names(mx) == ["data_const", "_minus0", "_mul0", "conv0"]
    assert has_builtin_normalisation(mx)
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(_onnx_bytes(["Conv_0", "Sub_1"] + [f"n{i}" for i in range(8)] + ["Mul_9"]))
    assert not has_builtin_normalisation(plain)  # Mul beyond the first 8 nodes
    assert len(onnx_node_names(plain)) == 8


class _FakeDetector:
    """Two faces: the right one larger and scored higher (reported first)."""

    def __call__(self, image):
        boxes = np.array([[60, 10, 100, 50], [5, 10, 30, 35]], np.float32)
        kps = np.stack([np.full((5, 2), 80.0), np.full((5, 2), 17.0)]).astype(np.float32)
        return boxes, np.array([0.9, 0.8], np.float32), kps


def test_detect_orders_reference_faces_with_their_keypoints(monkeypatch):
    import sys

    detect_module = sys.modules["instantportrait.faces.detect"]

    monkeypatch.setattr(detect_module, "_reference_detector", lambda config: _FakeDetector())
    img = np.zeros((64, 128, 3), np.uint8)
    found = detect_module.detect(img, method="mtcnn", select="all", landmarks="keypoints")
    np.testing.assert_array_equal(found.boxes[:, 0], [5, 60])  # left to right
    np.testing.assert_array_equal(found.keypoints[:, 0, 0], [17, 80])  # follow their faces
    largest = detect_module.detect(img, method="mtcnn", landmarks="keypoints")
    np.testing.assert_array_equal(largest.keypoints[0, 0], [80, 80])
    small = detect_module.detect(
        img, method="mtcnn", select="all", landmarks="keypoints", min_size=30
    )
    assert len(small) == 1 and float(small.keypoints[0, 0, 0]) == 80


class _Recorder(IdentityEmbedder):
    template, input_size, embedding_dim = "arcface", 112, 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        self.seen.append(crops)
        return crops.mean(dim=(2, 3)) + 1.0


def test_faceid_inputs_are_norm_crops_of_the_keypoints(dlib_module, grace_hopper, tmp_path):
    """FaceID-Plus-v2's inputs: the embedding of ``norm_crop(img, kps)`` (112) and the CLIP
    crop ``norm_crop(img, kps, 224)``; the detector defaults to the embedder's model folder."""
    from instantportrait.faces.detect import detect
    from instantportrait.pipelines.faceid import FaceIDEncoder

    rec = _Recorder()
    inputs = FaceIDEncoder(rec)(grace_hopper)
    img = np.array(grace_hopper)
    kps = detect(img, landmarks="keypoints").keypoints[0].numpy()
    got = (rec.seen[-1][0].permute(1, 2, 0).numpy() * 255).round()
    np.testing.assert_array_equal(got, norm_crop(img, kps, 112))
    got = (inputs.crop[0].permute(1, 2, 0).numpy() * 255).round()
    np.testing.assert_array_equal(got, norm_crop(img, kps, 224))
    # an embedder whose ONNX sits in an insightface folder brings its SCRFD
    _touch(tmp_path / "det_10g.onnx")
    rec.path = _touch(tmp_path / "w600k_r50.onnx")
    assert FaceIDEncoder(rec).analyzer.detector.name == "scrfd"
