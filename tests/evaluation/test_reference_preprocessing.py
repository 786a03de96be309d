"""HPS v2 and FD-DINOv2 see the image as their published scorers do: HPS v2 resizes the long
side and pads to a square (nothing cropped away), dgm-eval's FD-DINOv2 squashes the whole
image to 224x224 with PIL's bicubic filter and uses ViT-L/14's CLS token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.evaluation import metric_fns as fns

MEAN = torch.tensor(fns.CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(fns.CLIP_STD).view(3, 1, 1)


def test_hps_pads_the_short_side_of_a_1024x576_image():
    """A constant grey 1024x576 image: the long side becomes 224, the short 126
    (576 * 224 / 1024), centred with 49 padded rows above and below. Bicubic of a constant
    is the constant, so each row is either the grey or the black padding, normalised."""
    x = torch.full((1, 3, 576, 1024), 0.5)
    y = fns.hps_preprocess(x)[0]
    assert y.shape == (3, 224, 224)
    grey, black = (0.5 - MEAN) / STD, (0.0 - MEAN) / STD
    torch.testing.assert_close(y[:, :49], black.expand(3, 49, 224))
    torch.testing.assert_close(y[:, 49:175], grey.expand(3, 126, 224), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 175:], black.expand(3, 49, 224))
    # CLIP's own transform crops the sides away instead: no padding anywhere
    crop = fns.clip_preprocess(x)[0]
    torch.testing.assert_close(crop, grey.expand(3, 224, 224), atol=1e-5, rtol=0)


def test_hps_keeps_what_a_centre_crop_loses():
    """A mark in the leftmost 10% of a landscape image survives HPS's transform (long-side
    resize) and is cut away by CLIP's centre crop: the two embeddings' inputs differ."""
    x = torch.ones(1, 3, 576, 1024)
    x[..., :100] = 0.0
    hps = fns.hps_preprocess(x)[0]
    white = (1.0 - MEAN) / STD
    # the mark spans columns 0..21 (100 * 224/1024 = 21.9) of the padded square's rows
    assert torch.all(hps[:, 100, :15] < white - 1.0)
    crop = fns.clip_preprocess(x)[0]
    torch.testing.assert_close(crop, white.expand(3, 224, 224), atol=1e-4, rtol=0)


def test_hps_square_input_is_resized_without_padding():
    x = torch.rand(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(
        x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False
    )
    torch.testing.assert_close(fns.hps_preprocess(x), (expected - MEAN) / STD)


def test_dgm_eval_pixels_squash_the_whole_image():
    """PIL bicubic to 224x224 with the aspect not kept: a black band in the leftmost 10% of
    a 1024x576 image stays at the left (about 22 columns); a short-side resize and centre
    crop would have cut it away."""
    arr = np.full((576, 1024, 3), 255, np.uint8)
    arr[:, :102] = 0
    image = Image.fromarray(arr)
    x = fns.dgm_eval_dinov2_pixels(image)
    expected = np.asarray(image.resize((224, 224), Image.BICUBIC), np.float32) / 255.0
    torch.testing.assert_close(x, torch.from_numpy(expected).permute(2, 0, 1))
    assert x.shape == (3, 224, 224)
    assert float(x[:, :, :20].max()) < 0.05 and float(x[:, :, 25:].min()) > 0.95


def test_fd_dinov2_uses_the_squashed_image_and_names_a_non_vitl_model(tiny_dino):
    """The features reaching the Fréchet distance are the model's CLS token on the
    dgm-eval pixels (computed here by hand); a tiny DINOv2 is flagged as not ViT-L/14."""
    from instantportrait.evaluation.metrics import fid as fid_mod
    from instantportrait.faces.dino import IMAGENET_MEAN, IMAGENET_STD

    class Hub:
        device = torch.device("cpu")

        def get(self, key):
            assert key == "dinov2"
            return tiny_dino

    rng = np.random.default_rng(0)
    outs = [Image.fromarray(rng.integers(0, 255, (60, 100, 3), np.uint8)) for _ in range(3)]
    refs = [Image.fromarray(rng.integers(0, 255, (80, 50, 3), np.uint8)) for _ in range(3)]
    seen = []
    hook = tiny_dino.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["pixel_values"].clone()), with_kwargs=True
    )
    try:
        with pytest.warns(fid_mod.FDSampleWarning):
            value, detail = fid_mod.fd_dinov2(outs, refs, Hub())
    finally:
        hook.remove()
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    by_hand = [
        (torch.from_numpy(np.asarray(im.resize((224, 224), Image.BICUBIC), np.float32) / 255)
         .permute(2, 0, 1).unsqueeze(0) - m) / s
        for im in outs + refs
    ]  # fmt: skip
    assert len(seen) == 6
    for got, want in zip(seen, by_hand):
        torch.testing.assert_close(got, want)
    assert "not ViT-L/14" in detail["differs_from_published"]
    assert np.isfinite(value)
