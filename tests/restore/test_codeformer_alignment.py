"""CodeFormer sees faces aligned as it was trained: the FFHQ 512 template, the warp there and
back, and the blend through the aligned square's footprint."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from instantportrait.faces.align import crop_matrices
from instantportrait.restoration.codeformer import CodeFormerEnhancer

# facexlib's FaceRestoreHelper template for 512x512 faces (CodeFormer / GFPGAN inference)
FFHQ_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)


def _landmarks68(points5: np.ndarray) -> np.ndarray:
    """68 landmarks whose eye contours, nose tip and mouth corners sit on the five points."""
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48] = points5[0], points5[1]
    lm[30], lm[48], lm[54] = points5[2], points5[3], points5[4]
    return lm


class FakeNetwork(torch.nn.Module):
    """Stands in for CodeFormer: returns its input (``mode="same"``) or white."""

    def __init__(self, mode: str, size: int = 512):
        super().__init__()
        self.mode = mode
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(image_size=size)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, fidelity=0.5, adain=True):
        self.seen.append(x.clone())
        return SimpleNamespace(sample=x if self.mode == "same" else torch.ones_like(x))


def _face_in_crop(side: int = 256, scale: float = 0.35, angle: float = 12.0):
    """A smooth crop and the landmarks of a face placed by a known similarity transform."""
    a = math.radians(angle)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shift = np.array([side / 2, side / 2]) - rot @ np.array([256.0, 300.0])
    points = FFHQ_512 @ rot.T + shift
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * (255.0 / side)
    return Image.fromarray(img.round().astype(np.uint8)), _landmarks68(points), rot, shift


def test_ffhq_template_is_facexlibs_and_aligns_its_own_points_to_identity():
    lm = torch.as_tensor(_landmarks68(FFHQ_512), dtype=torch.float32)[None]
    m = crop_matrices(lm, "ffhq", 512)[0]
    torch.testing.assert_close(m, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), atol=1e-3, rtol=0)
    half = crop_matrices(lm, "ffhq", 256)[0]  # a 256 crop of the same face: twice the step
    assert abs(float(half[0, 0]) - 2.0) < 1e-3


def test_aligned_round_trip_returns_the_crop_and_leaves_the_uncovered_part_exact():
    crop, lm, rot, shift = _face_in_crop()
    net = FakeNetwork("same")
    out = np.asarray(CodeFormerEnhancer(net, 0.5)([crop], landmarks=[lm])[0], dtype=int)
    src = np.asarray(crop, dtype=int)
    # the network saw the face upright at FFHQ scale: the known transform, inverted
    seen = net.seen[0]
    assert seen.shape == (1, 3, 512, 512)
    # aligned pixel (u, v) shows crop pixel rot @ (u, v) + shift; check the eye-line centre
    u = np.array([256.0, 240.0])
    x, y = (rot @ u + shift).round().astype(int)
    expect = (src[y, x] / 255.0 - 0.5) / 0.5
    got = seen[0, :, 240, 256].numpy()
    np.testing.assert_allclose(got, expect, atol=0.03)
    # back in the crop: the face region is the input again (two bilinear resamplings of a
    # smooth ramp: off by at most 3 levels, only along the square's rim), and pixels the
    # aligned square does not reach are untouched, exactly
    diff = np.abs(out - src)
    assert diff.max() <= 3 and diff.mean() < 0.05
    corner = (slice(0, 8), slice(0, 8))  # far outside the rotated square
    assert np.array_equal(out[corner], src[corner])


def test_the_network_output_lands_on_the_face_not_elsewhere():
    crop, lm, rot, shift = _face_in_crop()
    out = np.asarray(CodeFormerEnhancer(FakeNetwork("white"), 0.5)([crop], landmarks=[lm])[0])
    for point in lm[[36, 42, 30, 48, 54]]:  # eyes, nose tip, mouth corners
        x, y = np.round(point).astype(int)
        assert (out[y, x] == 255).all()
    assert np.array_equal(out[:4, :4], np.asarray(crop)[:4, :4])  # outside: unchanged
    # without landmarks the whole crop is resized to the model and back: all white
    whole = np.asarray(CodeFormerEnhancer(FakeNetwork("white"), 0.5)([crop])[0])
    assert (whole == 255).all()


def test_face_restorer_gives_codeformer_each_crops_landmarks(small_astronaut, restore_bundle):
    from instantportrait.restoration.restorer import FaceRestorer

    got = {}

    def enhancer(crops, landmarks=None):
        got["crops"], got["landmarks"] = crops, landmarks
        return crops

    restorer = FaceRestorer.from_pretrained(
        restore_bundle, num_inference_steps=1, enhancer=enhancer
    )
    restorer.restore(small_astronaut)
    (crop,), (lm,) = got["crops"], got["landmarks"]
    assert lm.shape == (68, 2)
    side = crop.width
    assert (lm > 0).all() and (lm < side).all()
    # the face sits in the middle of DIIR's crop (2x its box): eyes above the mouth, centred
    eyes, mouth = lm[36:48].mean(axis=0), lm[48:68].mean(axis=0)
    assert eyes[1] < mouth[1] and abs(eyes[0] - side / 2) < side / 4
