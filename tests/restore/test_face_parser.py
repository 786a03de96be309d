"""DIIR's face mask M_B from a BiSeNet face parser: the library hook, ``restore --face-parser``,
``--restore-face-parser`` and the harness's ``face_parser=`` setting."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main
from instantportrait.faces.parsing import FaceParser, load_face_parser
from instantportrait.restoration.restorer import FaceRestorer

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def parser_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp") / "parser"
    assert main(["init-tiny", str(out), "--kind", "face-parser"]) == 0
    return out


@pytest.fixture(scope="module")
def astronaut_face(small_astronaut):
    """The shrunk astronaut's face: its crop box, the 64-px DIIR crop, its 68 landmarks."""
    from instantportrait.faces import detect
    from instantportrait.restoration.paste import crop_face, face_crop_box

    found = detect(small_astronaut, landmarks=68)
    crop = face_crop_box(found.boxes[0], 2.0)
    return crop, crop_face(small_astronaut, crop, 64), found.landmarks68[0].numpy()


def _parser_mask(parser, crop_img, side, sigma):
    """What M_B must be with a parser: its mask, resized to ``side``, blurred by ``sigma``."""
    from instantportrait.faces.masks import gaussian_blur

    m = parser(crop_img, None).reshape(1, 1, *crop_img.size[::-1])
    m = torch.nn.functional.interpolate(m, size=(side, side))
    return gaussian_blur(m, sigma).clamp(0, 1)


def test_the_restorer_uses_the_parser_mask_smoothed_once(parser_dir, astronaut_face):
    crop, crop_img, lm = astronaut_face
    parser = load_face_parser(parser_dir)
    with_parser = FaceRestorer(None, mask_fn=parser)
    plain = FaceRestorer(None)
    for side, landmarks in ((64, crop.to_crop(lm, 64)), (crop.side, crop.to_crop(lm, crop.side))):
        got = with_parser.face_mask(crop_img, landmarks, side)
        want = _parser_mask(parser, crop_img, side, 0.02 * side)
        assert torch.equal(got, want)
        assert not torch.allclose(got, plain.face_mask(crop_img, landmarks, side), atol=0.1)
        assert 0 < float(got.mean()) < 1


def test_mask_fn_gets_landmarks_in_the_crop_images_pixels(astronaut_face):
    crop, crop_img, lm = astronaut_face
    seen = []

    def spy(image, landmarks):
        seen.append(np.asarray(landmarks))
        return torch.ones(image.height, image.width)

    r = FaceRestorer(None, mask_fn=spy)
    r.face_mask(crop_img, crop.to_crop(lm, crop.side), crop.side)  # the paste-back call
    r.face_mask(crop_img, crop.to_crop(lm, 64), 64)  # the DIIR-resolution call
    assert np.allclose(seen[0], crop.to_crop(lm, 64), atol=1e-9)
    assert np.allclose(seen[1], crop.to_crop(lm, 64), atol=1e-9)


def test_restore_cli_face_parser(
    restore_bundle, parser_dir, small_astronaut, astronaut_face, tmp_path, monkeypatch
):
    crop, _, lm = astronaut_face
    src = tmp_path / "astro.png"
    small_astronaut.save(src)
    calls = []
    original = FaceRestorer.face_mask

    def recording(self, crop_image, landmarks, side):
        out = original(self, crop_image, landmarks, side)
        calls.append((self.mask_fn, crop_image, side, out))
        return out

    monkeypatch.setattr(FaceRestorer, "face_mask", recording)
    out = tmp_path / "out"
    argv = ["restore", str(src), "--model", str(restore_bundle), "--steps", "1"]
    assert main([*argv, "--face-parser", str(parser_dir), "-o", str(out)]) == 0
    assert len(calls) == 2 and all(isinstance(c[0], FaceParser) for c in calls)
    parser = calls[0][0]
    for _, crop_img, side, got in calls:
        assert torch.equal(got, _parser_mask(parser, crop_img, side, 0.02 * side))
    # the paste-back used the parser's mask: the output differs from the input exactly where
    # it is positive, including where the landmark mask is 0
    paste = calls[1][3][0, 0].numpy()
    landmark = FaceRestorer(None).face_mask(None, crop.to_crop(lm, crop.side), crop.side)
    before = np.asarray(small_astronaut).astype(int)
    after = np.asarray(Image.open(out / "astro.png")).astype(int)
    x0, y0, x1, y1 = crop.box
    ys, xs = slice(max(y0, 0), min(y1, 256)), slice(max(x0, 0), min(x1, 256))
    window = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    inside = np.zeros(before.shape[:2])
    inside[ys, xs] = paste[window]
    lm_inside = np.zeros(before.shape[:2])
    lm_inside[ys, xs] = landmark[0, 0].numpy()[window]
    diff = np.abs(after - before).max(-1)
    assert np.all(diff[inside == 0] == 0)
    assert diff[(inside > 0.9) & (lm_inside == 0)].max() > 0
    # a missing parser is one line, exit 2
    bad = [*argv, "--face-parser", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "o2")]
    assert main(bad) == 2


def test_restore_option_takes_the_parser(restore_bundle, parser_dir):
    from instantportrait.cli.restore_option import add_restore_arguments, build_restorer

    p = argparse.ArgumentParser()
    add_restore_arguments(p)
    args = p.parse_args(
        ["--restore", "--restore-model", str(restore_bundle)]
        + ["--restore-face-parser", str(parser_dir)]
    )
    assert isinstance(build_restorer(args).mask_fn, FaceParser)
    assert p.parse_args([]).restore_face_parser is None


def test_harness_face_parser_setting_is_in_the_key(restore_bundle, parser_dir, tmp_path):
    from instantportrait.errors import ModelNotFoundError
    from instantportrait.evaluation.methods import build_method

    base = f"restore:{restore_bundle},method=identity"
    plain = build_method(base)
    parsed = build_method(f"{base},face_parser={parser_dir}")
    assert plain.fingerprint() != parsed.fingerprint()
    assert "face_parser" not in plain.fingerprint_data()
    assert parsed.fingerprint_data()["face_parser"]["path"] == str(parser_dir.resolve())
    parsed.check()
    assert isinstance(parsed.restorer.mask_fn, FaceParser) and plain.restorer.mask_fn is None
    with pytest.raises(ModelNotFoundError, match="face_parser"):
        build_method(f"{base},face_parser={tmp_path / 'nope'}").check()
