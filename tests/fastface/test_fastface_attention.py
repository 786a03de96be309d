"""FastFace's attention manipulation (eqs. 7-10) on hand-made maps and against diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from instantportrait.attention import (
    AMPreset,
    AMState,
    FastFaceIPAdapterAttnProcessor,
    am_preset,
    am_presets,
    manipulated_ip_attention,
)

# A hand-made map (B=1, H=2, L=5 queries, S=4 ID tokens); rows sum to 1.
MAP = np.array(
    [
        [
            [0.50, 0.25, 0.125, 0.125],
            [0.10, 0.60, 0.20, 0.10],
            [0.70, 0.10, 0.10, 0.10],
            [0.25, 0.25, 0.25, 0.25],
            [0.05, 0.15, 0.30, 0.50],
        ],
        [
            [0.40, 0.30, 0.20, 0.10],
            [0.20, 0.20, 0.50, 0.10],
            [0.90, 0.04, 0.03, 0.03],
            [0.10, 0.10, 0.10, 0.70],
            [0.30, 0.30, 0.30, 0.10],
        ],
    ]
)[None]


def _qkv(a: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query/key/value whose attention map is exactly ``a`` and whose V' is the identity.

    With D = S = 4 and K' = 2 I, Q K'^T / sqrt(4) = Q, so Q = log(A) gives softmax(Q) = A;
    with V' = I the output f(A) V' is the transformed map itself.
    """
    b, h, _, s = a.shape
    query = torch.tensor(np.log(a), dtype=torch.float64).float()
    key = (2 * torch.eye(s)).expand(b, h, s, s).clone()
    value = torch.eye(s).expand(b, h, s, s).clone()
    return query, key, value


def test_identity_map_is_exact() -> None:
    q, k, v = _qkv(MAP)
    out = manipulated_ip_attention(q, k, v, "identity", "down", 0)
    assert np.allclose(out.numpy(), MAP, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "part", "scale"),
    [
        ("am1", "down", 1.55),
        ("am1", "up", 1.45),
        ("am1_paper", "down", 1.45),
        ("am1_paper", "up", 1.55),
    ],
)
def test_am1_scale_power_by_hand(preset: str, part: str, scale: float) -> None:
    q, k, v = _qkv(MAP)
    out = manipulated_ip_attention(q, k, v, preset, part, 2).numpy()
    expected = np.vectorize(lambda a: min(scale * math.pow(a, 1.3), 10.0))(MAP)
    assert np.allclose(out, expected, atol=1e-5)
    assert out[0, 0, 0, 0] == pytest.approx(scale * 0.5**1.3, abs=1e-5)


def test_mid_block_is_left_alone() -> None:
    q, k, v = _qkv(MAP)
    for name in ("am1", "am2"):
        out = manipulated_ip_attention(q, k, v, name, "mid", 1)
        assert np.allclose(out.numpy(), MAP, atol=1e-6)


def _reference_am2(a: np.ndarray, d: float, qa: float, s: float, w: float, adain: bool):
    """AM2 written from the spec's pseudo-code with loops (V' = I: output = map)."""
    b, h, n, t = a.shape
    orig = a.copy()
    x = a.copy()
    x[..., 0] = 1 - x[..., 0]
    lo = [
        min(x[i, j, q, k] for i in range(b) for j in range(h) for q in range(n)) for k in range(t)
    ]
    hi = [
        max(x[i, j, q, k] for i in range(b) for j in range(h) for q in range(n)) for k in range(t)
    ]
    norm = np.empty_like(x)
    for k in range(t):
        norm[..., k] = (x[..., k] - lo[k]) / (hi[k] - lo[k] + 1e-6)
    level = np.maximum(np.quantile(x, qa, axis=2, keepdims=True), 1e-6)
    r = 1 / (1 + np.exp(-d * (norm - level)))
    lo2 = r.min(axis=(0, 1, 2), keepdims=True)
    hi2 = r.max(axis=(0, 1, 2), keepdims=True)
    out = np.minimum(s * (r - lo2) / (hi2 - lo2 + 1e-6), 10.0)
    out[..., 0] = out[..., 0].max(axis=2, keepdims=True) - out[..., 0]
    if not adain:
        return out

    def ada(x, ref):
        m, sd = x.mean(-1, keepdims=True), x.std(-1, ddof=1, keepdims=True)
        return (x - m) * ref.std(-1, ddof=1, keepdims=True) / (sd + 1e-6) + ref.mean(
            -1, keepdims=True
        )

    out = w * out + (1 - w) * ada(out, orig)
    return w * out + (1 - w) * ada(out, orig)  # output AdaIN: h0 = A V' = A


@pytest.mark.parametrize(("step", "d", "s"), [(0, 7.5, 1.0), (1, 5.0, 1.55), (3, 5.0, 1.55)])
@pytest.mark.parametrize("preset", ["am2", "am2_noadain"])
def test_am2_against_loop_reference(preset: str, step: int, d: float, s: float) -> None:
    q, k, v = _qkv(MAP)
    out = manipulated_ip_attention(q, k, v, preset, "up", step).numpy()
    expected = _reference_am2(MAP, d, 0.65, s, 0.7, adain=preset == "am2")
    assert np.allclose(out, expected, atol=1e-4)


def test_am2_output_adain_uses_the_feature_axis() -> None:
    """With a general V': h = A~ V', h0 = A V', blended with AdaIN over the 8 features."""
    q, k, _ = _qkv(MAP)
    val = torch.randn(1, 2, 4, 8, generator=torch.Generator().manual_seed(0))
    out = manipulated_ip_attention(q, k, val, "am2", "down", 1).numpy()
    # the map with map-AdaIN only: the no-AdaIN map (checked above) then the blend
    bare = _reference_am2(MAP, 5.0, 0.65, 1.55, 0.7, adain=False)

    def ada(x, ref):
        m, sd = x.mean(-1, keepdims=True), x.std(-1, ddof=1, keepdims=True)
        return (x - m) * ref.std(-1, ddof=1, keepdims=True) / (sd + 1e-6) + ref.mean(
            -1, keepdims=True
        )

    maps = 0.7 * bare + 0.3 * ada(bare, MAP)
    v = val.double().numpy()
    h, h0 = maps @ v, MAP @ v
    assert np.allclose(out, 0.7 * h + 0.3 * ada(h, h0), atol=1e-4)
    assert not np.allclose(out, h, atol=1e-3)


def test_constant_map_gives_no_nan() -> None:
    a = np.full((1, 2, 5, 4), 0.25)
    q, k, v = _qkv(a)
    for name in ("am2", "am2_noadain", "am1"):
        out = manipulated_ip_attention(q, k, v, name, "down", 0)
        assert torch.isfinite(out).all(), name


def test_steps_and_tokens_limit_the_manipulation() -> None:
    q, k, v = _qkv(MAP)
    only_first = AMPreset.from_dict({**am_preset("am1").to_dict(), "steps": [0], "tokens": [1]})
    assert np.allclose(
        manipulated_ip_attention(q, k, v, only_first, "up", 1).numpy(), MAP, atol=1e-6
    )
    out = manipulated_ip_attention(q, k, v, only_first, "up", 0).numpy()
    assert np.allclose(out[..., [0, 2, 3]], MAP[..., [0, 2, 3]], atol=1e-6)
    assert np.allclose(out[..., 1], 1.45 * MAP[..., 1] ** 1.3, atol=1e-5)


def test_presets_are_data() -> None:
    presets = am_presets()
    assert set(presets) == {"am1", "am1_paper", "am2", "am2_noadain"}
    for p in presets.values():
        assert AMPreset.from_dict(p.to_dict()) == p
    assert presets["am2"].apply_adain and not presets["am2_noadain"].apply_adain
    with pytest.raises(ValueError, match="bogus"):
        AMPreset.from_dict({"kind": "scale_power", "bogus": 1})


def _attention_layer(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16).eval()


def _stock_and_ours(scale: float = 0.8):
    torch.manual_seed(1)
    stock = IPAdapterAttnProcessor2_0(
        hidden_size=32, cross_attention_dim=24, num_tokens=(4,), scale=scale
    )
    ours = FastFaceIPAdapterAttnProcessor.from_stock(stock, "down", AMState())
    return stock, ours


def _inputs(batch: int = 3):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(batch, 16, 32, generator=g)
    text = torch.randn(batch, 7, 24, generator=g)
    ip = torch.randn(batch, 1, 4, 24, generator=g)
    return hidden, (text, [ip])


@torch.no_grad()
def test_identity_processor_reproduces_diffusers_stock() -> None:
    layer = _attention_layer()
    stock, ours = _stock_and_ours()
    hidden, enc = _inputs()
    layer.set_processor(stock)
    expected = layer(hidden, encoder_hidden_states=enc)
    layer.set_processor(ours)
    with ours.state.active(am_preset("identity")):
        ours.state.at_step(0)
        got = layer(hidden, encoder_hidden_states=enc)
    assert (got - expected).abs().max() <= 1e-5
    got_stock_mode = layer(hidden, encoder_hidden_states=enc)  # no preset: stock path
    assert (got_stock_mode - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_text_attention_untouched() -> None:
    """With V' = 0 the IP branch adds nothing; every preset must then give the stock output."""
    layer = _attention_layer()
    stock, ours = _stock_and_ours()
    for lin in stock.to_v_ip:
        lin.weight.zero_()
    hidden, enc = _inputs()
    layer.set_processor(stock)
    expected = layer(hidden, encoder_hidden_states=enc)
    layer.set_processor(ours)
    for name in ("am1", "am2", "am2_noadain"):
        with ours.state.active(am_preset(name)):
            ours.state.at_step(1)
            got = layer(hidden, encoder_hidden_states=enc)
        assert (got - expected).abs().max() <= 1e-5, name
    # and with V' != 0 AM does change the output
    torch.manual_seed(3)
    for lin in stock.to_v_ip:
        lin.weight.normal_()
    with ours.state.active(am_preset("am1")):
        ours.state.at_step(1)
        changed = layer(hidden, encoder_hidden_states=enc)
    assert (changed - layer(hidden, encoder_hidden_states=enc)).abs().max() > 1e-4


@torch.no_grad()
def test_processor_refuses_a_missing_step() -> None:
    layer = _attention_layer()
    _, ours = _stock_and_ours()
    layer.set_processor(ours)
    hidden, enc = _inputs()
    with ours.state.active(am_preset("am1")), pytest.raises(RuntimeError, match="step"):
        layer(hidden, encoder_hidden_states=enc)
    assert ours.state.preset is None and ours.state.step is None
