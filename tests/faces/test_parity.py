"""Parity with the reference code: insightface (SCRFD, norm_crop, ArcFaceONNX) and OpenCV.

The reference packages come with the ``reference`` extra (``pip install
'instantportrait[reference]'``: insightface, onnx, onnxruntime, opencv-python-headless); these
tests skip, saying so, when they are absent. Networks are random (no weights reach this
machine): a synthetic SCRFD in insightface's output layout and a small random iresnet, both
exported to ONNX here, run on the repository's real photos through both pipelines.

Targets (issue 23): landmarks and boxes within 0.01 px, cosine >= 0.9999 per embedding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.parity

cv2 = pytest.importorskip("cv2", reason="reference extra not installed (opencv-python-headless)")
pytest.importorskip("onnx", reason="reference extra not installed (onnx)")
insightface = pytest.importorskip("insightface", reason="reference extra not installed")
pytest.importorskip("onnxruntime", reason="reference extra not installed (onnxruntime)")

from insightface.app.common import Face as InsightFace  # noqa: E402
from insightface.model_zoo.arcface_onnx import ArcFaceONNX  # noqa: E402
from insightface.model_zoo.scrfd import SCRFD  # noqa: E402
from insightface.utils import face_align  # noqa: E402
from parity_models import (  # noqa: E402
    SyntheticScrfd,
    TinyRecogniser,
    as_mxnet_conversion,
    export,
)


@pytest.fixture(scope="module")
def photos(astronaut, grace_hopper):
    return {"astronaut": np.array(astronaut), "grace_hopper": np.array(grace_hopper)}


@pytest.fixture(scope="module", params=[True, False], ids=["9-outputs", "6-outputs"])
def scrfd_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("scrfd") / "det.onnx"
    export(SyntheticScrfd(keypoints=request.param), path, (1, 3, 640, 640))
    return path


def test_resize_is_cv2_resize(photos):
    from instantportrait.faces.resample import resize_linear

    for img in photos.values():
        h, w = img.shape[:2]
        for size in ((640, 640), (int(640 * w / h), 640), (w // 3, h // 3), (333, 201)):
            np.testing.assert_array_equal(resize_linear(img, *size), cv2.resize(img, size))


def test_scrfd_decoder_matches_insightface(scrfd_file, photos):
    from instantportrait.faces.scrfd import ScrfdDetector

    ours = ScrfdDetector(scrfd_file)
    ref = SCRFD(str(scrfd_file))
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    for name, img in photos.items():
        boxes, scores, kps = ours(img)
        # insightface reads BGR (cv2.imread) and swaps to RGB itself
        det, ref_kps = ref.detect(img[:, :, ::-1].copy(), input_size=(640, 640))
        assert len(det) > 3, f"{name}: the synthetic model should find several candidates"
        assert boxes.shape == (len(det), 4), name
        np.testing.assert_allclose(scores, det[:, 4], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(boxes, det[:, :4], atol=0.01, err_msg=name)
        if ref_kps is None:
            assert kps is None
        else:
            np.testing.assert_allclose(kps, ref_kps, atol=0.01, err_msg=name)


def test_estimate_norm_and_norm_crop_match_insightface(photos):
    from instantportrait.faces.align import estimate_norm, norm_crop

    rng = np.random.default_rng(0)
    base = np.array([[200, 220], [280, 215], [240, 270], [210, 310], [275, 305]], float)
    for img in photos.values():
        for t in range(4):
            kps = base * (0.4 + 0.5 * t) + rng.normal(0, 3, (5, 2))
            for size in (112, 224, 128, 256):
                np.testing.assert_allclose(
                    estimate_norm(kps, size), face_align.estimate_norm(kps, size), atol=1e-4
                )
                ours = norm_crop(img, kps, size).astype(int)
                ref = face_align.norm_crop(img, kps, size).astype(int)
                diff = np.abs(ours - ref)
                # float rounding order: one level on about 1 pixel in 10,000
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (size, diff.mean())


def test_224_crop_is_norm_crop_224(photos):
    """The FaceID-Plus CLIP crop: insightface scales the template by 2 (``p * 2``)."""
    from instantportrait.faces.align import crop_faces

    img = photos["grace_hopper"]
    kps = np.array([[221.7, 192.3], [309.8, 186.2], [269.3, 239.2], [232.7, 279.7], [306.6, 276]])
    ref = face_align.norm_crop(img, kps, 224).astype(np.float32) / 255.0
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    ours = crop_faces(t, torch.tensor(kps)[None].float(), "arcface", 224, points="keypoints")
    ours = ours[0].permute(1, 2, 0).numpy()
    # the differentiable warp (no antialias needed: the face is not shrunk 2x) is within
    # 8-bit rounding of the reference; a half-pixel shift would give errors of ~0.05
    assert np.abs(ours - ref).mean() < 2e-3


@pytest.mark.parametrize("builtin", [False, True], ids=["plain", "builtin-normalisation"])
def test_arcface_onnx_embedding_matches_insightface(builtin, photos, tmp_path):
    from instantportrait.faces.align import norm_crop
    from instantportrait.faces.arcface import ArcFaceOnnxEmbedder, has_builtin_normalisation

    path = tmp_path / "rec.onnx"
    export(TinyRecogniser(builtin), path, (1, 3, 112, 112), dynamic_batch=True)
    if builtin:
        as_mxnet_conversion(path)
    ref = ArcFaceONNX(str(path))
    ours = ArcFaceOnnxEmbedder(path)
    assert has_builtin_normalisation(path) == builtin
    assert (ours.input_mean, ours.input_std) == (ref.input_mean, ref.input_std)
    kps = {  # MTCNN's points on the two photos
        "astronaut": [[205, 101.7], [246.8, 103.7], [224.7, 129], [201.7, 139.2], [245, 142]],
        "grace_hopper": [[221.7, 192.3], [309.8, 186.2], [269.3, 239], [232.7, 280], [306, 276]],
    }
    kps = {k: np.array(v) for k, v in kps.items()}
    for name, img in photos.items():
        face = InsightFace(kps=kps[name].astype(np.float32))
        want = ref.get(img[:, :, ::-1].copy(), face)
        crop = torch.from_numpy(norm_crop(img, kps[name].astype(np.float32), 112))
        got = ours(crop.permute(2, 0, 1)[None].float() / 255.0)[0].numpy()
        cos = float(want @ got / np.linalg.norm(want) / np.linalg.norm(got))
        assert cos >= 0.9999, (name, cos)


def test_scrfd_arcface_pipeline_matches_insightface(photos, tmp_path):
    """The whole reference path: our SCRFD keypoints, norm_crop and ONNX embedding against
    insightface's ``SCRFD.detect`` + ``ArcFaceONNX.get`` (what ``FaceAnalysis.get`` runs)."""
    from instantportrait.faces.analyzer import FaceAnalyzer
    from instantportrait.faces.arcface import ArcFaceOnnxEmbedder
    from instantportrait.faces.detectors import FaceDetectorConfig

    det_path, rec_path = tmp_path / "det_10g.onnx", tmp_path / "w600k_r50.onnx"
    export(SyntheticScrfd(), det_path, (1, 3, 640, 640))
    export(TinyRecogniser(), rec_path, (1, 3, 112, 112), dynamic_batch=True)
    config = FaceDetectorConfig.from_options(face_model=tmp_path)
    assert config.name == "scrfd" and config.weights == det_path
    analyzer = FaceAnalyzer(
        detector=config,
        embedder=ArcFaceOnnxEmbedder(rec_path),
        template="arcface",
        reference=True,
        min_size=0,
    )
    scrfd = SCRFD(str(det_path))
    scrfd.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    rec = ArcFaceONNX(str(rec_path))
    for name, img in photos.items():
        bgr = img[:, :, ::-1].copy()
        det, kpss = scrfd.detect(bgr, input_size=(640, 640))
        faces = analyzer.analyze(img)
        assert len(faces) == len(det), name
        for i in range(min(3, len(det))):
            ref_emb = rec.get(bgr, InsightFace(kps=kpss[i]))
            match = [f for f in faces if np.abs(f.box.numpy() - det[i, :4]).max() < 0.01]
            assert len(match) >= 1, (name, i)
            face = match[0]
            np.testing.assert_allclose(face.keypoints.numpy(), kpss[i], atol=0.01)
            got = face.embedding.numpy()
            cos = float(ref_emb @ got / np.linalg.norm(ref_emb) / np.linalg.norm(got))
            assert cos >= 0.9999, (name, i, cos)
