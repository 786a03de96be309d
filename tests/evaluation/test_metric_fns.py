"""Metric formulas against hand computation on tiny random models: CLIP-T, CLIP-I, FSC, DINO,
LPIPS / Intra-LPIPS, the Fréchet distance, the LAION aesthetic head, preprocessing."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instantportrait.evaluation import metric_fns as fns
from instantportrait.evaluation.lpips import LPIPS

MEAN = torch.tensor(fns.CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(fns.CLIP_STD).view(1, 3, 1, 1)


def _np_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_clip_preprocess_resizes_crops_and_normalises():
    img = torch.ones(1, 3, 40, 64) * torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)
    out = fns.clip_preprocess(img, 32)
    assert out.shape == (1, 3, 32, 32)
    expected = (torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1) - MEAN) / STD
    torch.testing.assert_close(out, expected.expand_as(out), atol=1e-5, rtol=0)
    # centre crop: a wide image keeps its middle columns
    wide = torch.zeros(1, 3, 32, 96)
    wide[..., 32:64] = 1.0
    mid = fns.clip_preprocess(wide, 32)
    torch.testing.assert_close(mid, ((1 - MEAN) / STD).expand_as(mid), atol=1e-5, rtol=0)


def test_clip_t_is_the_raw_cosine_of_clip_logits(tiny_clip, tokenizer, rand_images):
    images = rand_images(2, 32, seed=1)
    texts = ["wearing a 1920s flapper dress, feathered headband", "as a marble statue"]
    score = fns.clip_text_score(tiny_clip, tokenizer, images, texts)
    # by hand: the model's own forward gives logit_scale * cos; pixels normalised by hand
    ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = tiny_clip(input_ids=ids, pixel_values=(images - MEAN) / STD)
    expected = out.logits_per_image.diagonal() / tiny_clip.logit_scale.exp()
    torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
    assert score.abs().max() <= 1


def test_clip_i_matches_hand_computation(tiny_clip, rand_images):
    a, b = rand_images(2, 32, seed=2), rand_images(2, 32, seed=3)
    score = fns.clip_image_score(tiny_clip, a, b)
    with torch.no_grad():
        ea = tiny_clip.visual_projection(
            tiny_clip.vision_model(pixel_values=(a - MEAN) / STD).pooler_output
        )
        eb = tiny_clip.visual_projection(
            tiny_clip.vision_model(pixel_values=(b - MEAN) / STD).pooler_output
        )
    np.testing.assert_allclose(score.numpy(), _np_cos(ea.numpy(), eb.numpy()), atol=1e-5)
    # an image against itself scores 1
    torch.testing.assert_close(fns.clip_image_score(tiny_clip, a, a), torch.ones(2))


def test_fsc_scores_the_face_crop_against_the_style_part(tiny_clip, tokenizer, rand_images):
    assert fns.style_part("watercolor painting; person in a flower field") == (
        "watercolor painting"
    )
    assert fns.style_part("a photo of a person in a cafe") is None
    assert fns.style_part(" ; person") is None
    crops = rand_images(1, 48, seed=4)
    score = fns.face_style_score(tiny_clip, tokenizer, crops, ["watercolor painting"])
    pixels = F.interpolate(crops, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    ids = tokenizer(
        ["watercolor painting"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        out = tiny_clip(input_ids=ids, pixel_values=(pixels - MEAN) / STD)
    expected = out.logits_per_image[0, 0] / tiny_clip.logit_scale.exp()
    assert float(score[0]) == pytest.approx(float(expected), abs=1e-5)


def test_dino_matches_hand_computation(tiny_dino, rand_images):
    a, b = rand_images(3, 32, seed=5), rand_images(3, 32, seed=6)
    score = fns.dino_score(tiny_dino, a, b)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        fa = tiny_dino.model(pixel_values=(a - mean) / std).pooler_output.numpy()
        fb = tiny_dino.model(pixel_values=(b - mean) / std).pooler_output.numpy()
    np.testing.assert_allclose(score.numpy(), _np_cos(fa, fb), atol=1e-5)


def _lpips_by_hand(net: LPIPS, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """LPIPS eq. 1 for the tiny net: conv-relu | pool conv-relu, numpy for the distance."""
    shift = np.array([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
    scale = np.array([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)
    conv1, conv2 = net.features[0], net.features[3]

    def feats(x):
        x = torch.from_numpy(((x.numpy() * 2 - 1 - shift) / scale).astype(np.float32))
        f1 = torch.relu(F.conv2d(x, conv1.weight, conv1.bias, padding=1))
        f2 = torch.relu(F.conv2d(F.max_pool2d(f1, 2), conv2.weight, conv2.bias, padding=1))
        return [f1.numpy().astype(np.float64), f2.numpy().astype(np.float64)]

    total = np.zeros(a.shape[0])
    for fa, fb, lin in zip(feats(a), feats(b), net.lins):
        w = lin.model[1].weight.detach().numpy().reshape(1, -1, 1, 1)
        na = fa / (np.sqrt((fa**2).sum(1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(1, keepdims=True)) + 1e-10)
        total += (w * (na - nb) ** 2).sum(1).mean(axis=(1, 2))
    return total


def test_lpips_matches_eq1_by_hand(tiny_lpips, rand_images):
    a, b = rand_images(2, 16, seed=7), rand_images(2, 16, seed=8)
    with torch.no_grad():
        d = tiny_lpips(a, b)
    np.testing.assert_allclose(d.numpy(), _lpips_by_hand(tiny_lpips, a, b), rtol=1e-5)
    assert torch.all(tiny_lpips(a, a) == 0)


def test_intra_lpips_is_the_mean_over_pairs(tiny_lpips, rand_images):
    images = rand_images(4, 16, seed=9)
    value = fns.intra_lpips(tiny_lpips, images)
    pairs = [
        float(_lpips_by_hand(tiny_lpips, images[i : i + 1], images[j : j + 1])[0])
        for i, j in itertools.combinations(range(4), 2)
    ]
    assert len(pairs) == 6
    assert value == pytest.approx(sum(pairs) / 6, rel=1e-5)
    with pytest.raises(ValueError):
        fns.intra_lpips(tiny_lpips, images[:1])


def test_lpips_loads_the_published_layout(lpips_alex_dir, rand_images):
    net = LPIPS.from_weights(lpips_alex_dir)
    assert net.net_name == "alex"
    torch.manual_seed(1)
    ref = LPIPS("alex")
    ref_heads = [lin.model[1].weight.abs() for lin in ref.lins]
    for lin, w in zip(net.lins, ref_heads):
        torch.testing.assert_close(lin.model[1].weight, w)
    torch.testing.assert_close(net.features[0].weight, ref.features[0].weight)
    a, b = rand_images(1, 64, seed=10), rand_images(1, 64, seed=11)
    assert float(net(a, b)[0]) > 0


def test_lpips_rejects_incomplete_weights(tmp_path):
    from instantportrait.errors import InputError

    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "alex.pth")
    with pytest.raises(InputError, match="backbone"):
        LPIPS.from_weights(tmp_path)


def _hadamard_set(mu: list[float], s: list[float]) -> np.ndarray:
    """4 samples in 3-D whose sample covariance is exactly diag(s^2 * 4 / 3)."""
    h = np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=np.float64)
    return np.array(mu) + h * np.array(s)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    mu1, s1 = [0.5, -1.0, 2.0], [1.0, 0.5, 2.0]
    mu2, s2 = [0.0, 1.0, 2.5], [2.0, 0.5, 0.25]
    a, b = _hadamard_set(mu1, s1), _hadamard_set(mu2, s2)
    v1 = [x * x * 4 / 3 for x in s1]
    v2 = [x * x * 4 / 3 for x in s2]
    expected = sum((x - y) ** 2 for x, y in zip(mu1, mu2)) + sum(
        p + q - 2 * math.sqrt(p * q) for p, q in zip(v1, v2)
    )
    assert fns.frechet_distance_from_features(a, b) == pytest.approx(expected, rel=1e-9)
    assert fns.frechet_distance_from_features(torch.from_numpy(a), a) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_agrees_with_scipy_sqrtm_for_full_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 6)) + 0.3
    m1, c1 = fns.feature_statistics(a)
    m2, c2 = fns.feature_statistics(b)
    covmean = linalg.sqrtm(c1 @ c2).real
    expected = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean)
    assert fns.frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-7)


def test_clean_resize_is_per_channel_float_bicubic(astronaut_path):
    img = Image.fromarray(np.full((40, 50, 3), 77, dtype=np.uint8))
    out = fns.clean_resize(img, 29)
    assert out.shape == (3, 29, 29)
    torch.testing.assert_close(out, torch.full_like(out, 77.0), atol=1e-3, rtol=0)
    # a real photo: float bicubic with antialias, computed by torch instead of PIL, agrees to
    # 1e-3 of a grey level; a uint8 resize (0.27 off on average) or bilinear (2.3) do not
    photo = Image.open(astronaut_path).convert("RGB").resize((200, 150), Image.LANCZOS)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32)).permute(2, 0, 1)[None]
    ref = F.interpolate(x, size=(96, 96), mode="bicubic", antialias=True)[0].clamp(0, 255)
    assert (fns.clean_resize(photo, 96) - ref).abs().mean() < 0.01


def test_ffc_counts_an_item_when_a_reference_or_the_output_has_no_face():
    # FastFace's face_fail_cnt: reference OR generated image without a face
    table = {
        ((True,), True): False,
        ((True,), False): True,
        ((False,), True): True,
        ((False,), False): True,
        ((True, False), True): True,
        ((True, True), True): False,
    }
    for (refs, out), expected in table.items():
        assert fns.face_failure(refs, out) is expected, (refs, out)


def test_laion_aesthetic_head_loads_its_state_dict_and_normalises():
    torch.manual_seed(0)
    head = fns.AestheticPredictor(in_dim=16).eval()
    loaded = fns.AestheticPredictor.from_state_dict(head.state_dict())
    assert sorted({k.rsplit(".", 1)[0] for k in head.state_dict()}) == [
        "layers.0",
        "layers.2",
        "layers.4",
        "layers.6",
        "layers.7",
    ]
    x = torch.randn(3, 16)
    y = F.normalize(x, dim=-1)
    for i in (0, 2, 4, 6, 7):
        layer = head.layers[i]
        y = y @ layer.weight.T + layer.bias
    torch.testing.assert_close(loaded(x), y.squeeze(-1))
    torch.testing.assert_close(loaded(x * 5), loaded(x))  # the embedding is normalised first
    linear = fns.AestheticPredictor.from_state_dict(
        {"weight": torch.ones(1, 16), "bias": torch.zeros(1)}
    )
    assert float(linear(torch.ones(1, 16))[0]) == pytest.approx(4.0)


def test_openclip_checkpoints_convert_to_transformers(tiny_clip, tokenizer, rand_images, tmp_path):
    from instantportrait.evaluation.convert import (
        convert_checkpoint,
        openclip_to_transformers,
        transformers_to_openclip,
    )

    sd = transformers_to_openclip(tiny_clip)
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    act = tiny_clip.config.text_config.hidden_act
    arch = {"vision_heads": 4, "text_heads": 4, "act": act}
    back = openclip_to_transformers(sd, arch)
    images = rand_images(2, 32, seed=12)
    texts = ["as a marble statue", "pixar style"]
    torch.testing.assert_close(
        fns.clip_text_score(back, tokenizer, images, texts),
        fns.clip_text_score(tiny_clip, tokenizer, images, texts),
    )
    torch.save({"state_dict": sd}, tmp_path / "hps.pt")  # the layout HPS v2 is published in
    import instantportrait.evaluation.convert as conv

    conv.ARCHS["tiny-test"] = arch
    try:
        folder = convert_checkpoint(tmp_path / "hps.pt", tmp_path / "hps", "tiny-test")
    finally:
        conv.ARCHS.pop("tiny-test")
    assert (folder / "model.safetensors").is_file()
