"""FaceAnalyzer's two levels, and the ``instantportrait faces`` commands end to end."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageOps

pytest.importorskip("dlib")

from instantportrait.cli import main  # noqa: E402
from instantportrait.faces import Face, FaceAnalyzer, face_stack_status  # noqa: E402
from instantportrait.faces.detect import NoFaceFoundError  # noqa: E402


@pytest.fixture(scope="module")
def analyzer(dlib_embedder):
    return FaceAnalyzer(embedder=dlib_embedder)


def test_analyze_gives_crops_and_embeddings(analyzer, astronaut):
    faces = analyzer.analyze(astronaut)
    assert len(faces) == 1 and isinstance(faces[0], Face)
    f = faces[0]
    assert f.box.shape == (4,) and f.score > 0.5
    assert f.landmarks5.shape == (5, 2) and f.landmarks68.shape == (68, 2)
    assert f.crop.shape == (3, 150, 150) and f.crop.min() >= 0 and f.crop.max() <= 1
    assert f.embedding.shape == (128,) and abs(float(f.embedding.norm()) - 1) < 1e-5
    assert f.descriptor.shape == (128,)


def test_low_level_api_composes_to_analyze(analyzer, astronaut, to_tensor):
    det = analyzer.detect(astronaut)
    lm68 = analyzer.landmarks(astronaut, det.boxes, points=68)
    assert torch.equal(lm68, det.landmarks68)
    lm5 = analyzer.landmarks(astronaut, det.boxes, points=5)
    crops = analyzer.align(astronaut, lm5)
    emb = analyzer.embed(crops)
    assert crops.shape == (1, 3, 150, 150) and emb.shape == (1, 128)
    torch.testing.assert_close(emb[0], analyzer.analyze(astronaut)[0].embedding)
    # A float tensor image keeps its gradient through align and embed.
    x = to_tensor(astronaut).requires_grad_(True)
    analyzer.embed(analyzer.align(x, lm5)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_detection_only_analyzer_and_batches(astronaut_half, grace_hopper_half):
    plain = FaceAnalyzer(embedder=None)
    faces = plain.analyze([astronaut_half, grace_hopper_half])
    assert [len(f) for f in faces] == [1, 1]
    assert faces[0][0].embedding is None and faces[0][0].crop.shape == (3, 150, 150)
    arc = FaceAnalyzer(embedder=None, template="arcface").analyze(grace_hopper_half)
    assert arc[0].crop.shape == (3, 112, 112)
    with pytest.raises(NoFaceFoundError):
        plain.analyze(Image.new("RGB", (96, 96), "white"))


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_detect_json_and_drawings(capsys, tmp_path, astronaut_path, grace_hopper_path):
    code, out, err = _run(
        capsys, "faces", "detect", astronaut_path, grace_hopper_path, "--json", "--draw", tmp_path
    )
    assert code == 0, err
    result = json.loads(out)
    assert [r["image"] for r in result] == [str(astronaut_path), str(grace_hopper_path)]
    for r in result:
        assert len(r["faces"]) == 1
        face = r["faces"][0]
        assert len(face["box"]) == 4 and face["score"] > 0.5
        assert len(face["landmarks5"]) == 5 and len(face["landmarks68"]) == 68
    for stem in ("astronaut", "grace_hopper"):
        drawn = tmp_path / f"{stem}_faces.png"
        assert drawn.is_file()
        with Image.open(drawn) as im:
            assert im.size in ((512, 512), (512, 600))
    # Plain text output; a second run refuses to overwrite the drawings.
    code, out, _ = _run(capsys, "faces", "detect", astronaut_path)
    assert code == 0 and "1 face" in out and "box (" in out
    code, _, err = _run(capsys, "faces", "detect", astronaut_path, "--draw", tmp_path)
    assert code == 2 and "already exists" in err


def test_cli_detect_bad_image_exits_2(capsys, tmp_path, astronaut_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = _run(capsys, "faces", "detect", astronaut_path, bad, "--draw", tmp_path)
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*_faces.png"))  # nothing written when an input is bad
    code, _, err = _run(capsys, "faces", "detect", tmp_path / "missing.jpg")
    assert code == 2 and "no such file" in err
    # A face-free image is not an error for detect: it has 0 faces.
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), "white").save(flat)
    code, out, _ = _run(capsys, "faces", "detect", flat)
    assert code == 0 and "0 faces" in out


def test_cli_compare(capsys, tmp_path, monkeypatch, astronaut, astronaut_path, grace_hopper_path):
    monkeypatch.setenv("INSTANTPORTRAIT_CACHE", str(tmp_path / "cache"))
    mirror = tmp_path / "astronaut_mirror.png"
    ImageOps.mirror(astronaut).save(mirror)
    code, out, err = _run(capsys, "faces", "compare", astronaut_path, mirror)
    assert code == 0, err
    assert "cosine similarity:" in out and "dlib distance:" in out
    assert "verdict: same person" in out
    code, out, _ = _run(capsys, "faces", "compare", astronaut_path, grace_hopper_path, "--json")
    result = json.loads(out)
    assert code == 0 and result["same_person"] is False and result["distance"] > 0.6
    assert result["threshold"] == 0.6


def test_cli_compare_errors(capsys, tmp_path, monkeypatch, astronaut_path):
    monkeypatch.setenv("INSTANTPORTRAIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INSTANTPORTRAIT_FACENET_WEIGHTS", raising=False)
    argv = ["faces", "compare", astronaut_path, astronaut_path, "--embedder", "facenet"]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "--weights" in err and len(err.strip().splitlines()) == 1
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), "white").save(flat)
    code, _, err = _run(capsys, "faces", "compare", astronaut_path, flat)
    assert code == 2 and "no face found" in err and str(flat) in err
    code, _, err = _run(capsys, "faces", "compare", astronaut_path, tmp_path / "nope.png")
    assert code == 2 and "no such file" in err
    code, _, err = _run(capsys, "faces", "detect", astronaut_path, "--upsample", "9")
    assert code == 2 and "--upsample" in err


def test_face_stack_status_lists_the_models():
    status = face_stack_status()
    assert "available" in status["dlib"]
    for kind in ("mmod", "landmarks_5", "landmarks_68", "resnet"):
        assert f"dlib model {kind}" in status
    assert any("onnxruntime" in key for key in status)
