"""Face-part masks from the 68 landmarks of the real portraits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instantportrait.faces.masks import FACE_PARTS, face_mask, face_masks, polygon_mask


@pytest.fixture(scope="module")
def portraits(astronaut, grace_hopper, astronaut_faces, grace_hopper_faces):
    return [
        (astronaut_faces.landmarks68, (astronaut.height, astronaut.width)),
        (grace_hopper_faces.landmarks68, (grace_hopper.height, grace_hopper.width)),
    ]


def _centroid_x(mask: torch.Tensor) -> float:
    xs = torch.arange(mask.shape[-1], dtype=torch.float32)
    return float((mask[0, 0] * xs).sum() / mask[0, 0].sum())


def test_parts_inside_the_face_left_right_and_plausible_areas(portraits):
    for lm, size in portraits:
        masks = face_masks(lm, size)
        assert set(masks) == set(FACE_PARTS)
        for m in masks.values():
            assert m.shape == (1, 1, *size) and m.dtype == torch.float32
            assert m.min() >= 0 and m.max() <= 1
        face = face_mask(lm, size, "face", dilate=3)
        face_area = float((masks["face"] > 0.5).sum())
        assert 0.02 < face_area / (size[0] * size[1]) < 0.5
        for part in ("left_eye", "right_eye", "nose", "mouth"):
            inside = masks[part] > 0
            assert inside.any(), part
            assert (face[inside] > 0).all(), f"{part} leaves the (dilated) face mask"
        area = {p: float(masks[p].sum()) / face_area for p in FACE_PARTS}
        assert 0.003 < area["left_eye"] < 0.05 and 0.003 < area["right_eye"] < 0.05
        assert 0.02 < area["nose"] < 0.15 and 0.02 < area["mouth"] < 0.15
        assert 0.5 < area["left_eye"] / area["right_eye"] < 2
        # Left and right are the subject's: the left eye is on the image's right.
        nose_x = _centroid_x(masks["nose"])
        assert _centroid_x(masks["right_eye"]) < nose_x < _centroid_x(masks["left_eye"])
        # The forehead is included: the face mask reaches above the eyebrows.
        top = torch.nonzero(masks["face"][0, 0] > 0.5)[:, 0].min()
        assert top < lm[0, 17:27, 1].min() - 10


def test_dilate_feather_and_resolution(portraits):
    lm, size = portraits[0]
    base = face_mask(lm, size, "mouth")
    grown = face_mask(lm, size, "mouth", dilate=5)
    soft = face_mask(lm, size, "mouth", feather=3.0)
    assert grown.sum() > base.sum() and (grown >= base - 1e-6).all()
    assert ((soft > 0.05) & (soft < 0.95)).sum() > ((base > 0.05) & (base < 0.95)).sum()
    assert abs(float(soft.sum() - base.sum())) < 0.05 * float(base.sum())  # blur keeps mass
    # Any resolution: masks drawn at half size match the full-size ones pooled.
    half = face_masks(lm, (size[0] // 2, size[1] // 2), ("face",), image_size=size)["face"]
    pooled = F.avg_pool2d(face_mask(lm, size, "face"), 2)
    a, b = half > 0.5, pooled > 0.5
    assert float((a & b).sum()) / float((a | b).sum()) > 0.95
    # A batch of landmarks gives a batch of masks.
    two = face_masks(torch.cat([lm, lm]), size, ("nose",))["nose"]
    assert two.shape == (2, 1, *size) and torch.equal(two[0], two[1])


def test_polygon_mask_area_and_errors():
    square = torch.tensor([[10.0, 10.0], [29.0, 10.0], [29.0, 29.0], [10.0, 29.0]])
    m = polygon_mask(square, (40, 40))
    # Pixel centres 10..29 are covered; the anti-aliased edge adds half a pixel per side.
    assert abs(float(m.sum()) - 20.0**2) < 2 * 20 + 1
    assert m[20, 20] == 1 and m[0, 0] == 0
    # A concave polygon (an L shape) is filled by the even-odd rule.
    ell = torch.tensor([[0.0, 0.0], [20.0, 0.0], [20.0, 5.0], [5.0, 5.0], [5.0, 20.0], [0.0, 20.0]])
    lm = polygon_mask(ell, (30, 30))
    assert lm[2, 15] == 1 and lm[15, 2] == 1 and lm[15, 15] == 0
    with pytest.raises(ValueError, match="68"):
        face_masks(torch.zeros(1, 5, 2), (8, 8))
    with pytest.raises(ValueError, match="parts"):
        face_masks(torch.zeros(68, 2), (8, 8), ("ears",))
