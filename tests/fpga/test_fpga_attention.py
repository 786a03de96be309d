"""Mask-guided multi-ID cross-attention (FPGA eq. 1 and §3) on one diffusers Attention layer."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from instantportrait.multi_id_attention import (
    IDAttentionCapture,
    IDAttnProcessor,
    downsample_masks,
    ip_adapter_multi_id_inputs,
    layer_hw,
)

H = W = 4  # the layer's map: 16 queries
L, D, T = H * W, 32, 4


@pytest.fixture
def layer():
    torch.manual_seed(0)
    attn = Attention(query_dim=D, cross_attention_dim=D, heads=2, dim_head=16)
    proc = IDAttnProcessor(attn.to_k.out_features, D)
    torch.nn.init.normal_(proc.to_k_id.weight, std=0.3)
    torch.nn.init.normal_(proc.to_v_id.weight, std=0.3)
    attn.set_processor(proc)
    x = torch.randn(2, L, D)
    text = torch.randn(2, 7, D)
    return attn, proc, x, text


def _run(attn, x, text, **kw):
    with torch.no_grad():
        return attn(x, encoder_hidden_states=text, **kw)


def test_single_id_matches_hand_computed_decoupled_attention(layer):
    attn, proc, x, text = layer
    ids = torch.randn(2, T, D)
    out = _run(attn, x, text, id_embeds=ids)

    def heads_attention(q, k, v):  # per head, softmax(q k^T / sqrt(d)) v, written out
        qs, ks, vs = (t.view(2, -1, 2, 16).permute(0, 2, 1, 3) for t in (q, k, v))
        p = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", qs, ks) / 4.0, dim=-1)
        return torch.einsum("bhqk,bhkd->bhqd", p, vs).permute(0, 2, 1, 3).reshape(2, -1, 32)

    with torch.no_grad():
        q = attn.to_q(x)
        text_part = heads_attention(q, attn.to_k(text), attn.to_v(text))
        id_part = heads_attention(q, proc.to_k_id(ids), proc.to_v_id(ids))
        expected = attn.to_out[0](text_part + id_part)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_all_ones_mask_equals_single_id(layer):
    attn, _, x, text = layer
    ids = torch.randn(2, T, D)
    single = _run(attn, x, text, id_embeds=ids)
    masked = _run(attn, x, text, id_embeds=ids, id_masks=torch.ones(2, 1, 32, 32))
    torch.testing.assert_close(masked, single, atol=1e-6, rtol=1e-6)


def test_all_zero_mask_equals_no_identity(layer):
    attn, _, x, text = layer
    ids = torch.randn(2, T, D)
    none = _run(attn, x, text)
    zero = _run(attn, x, text, id_embeds=ids, id_masks=torch.zeros(1, 1, 32, 32))
    with_id = _run(attn, x, text, id_embeds=ids)
    torch.testing.assert_close(zero, none, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(with_id, none, atol=1e-3)  # the identity does change the output


def test_two_masks_route_two_identities_to_their_regions(layer):
    attn, _, x, text = layer
    a, b = torch.randn(2, T, D), torch.randn(2, T, D)
    left = torch.zeros(H, W)
    left[:, : W // 2] = 1
    masks = torch.stack([left, 1 - left])[None]  # (1, 2, H, W) at the layer's resolution
    both = _run(attn, x, text, id_embeds=torch.stack([a, b], dim=1), id_masks=masks)
    only_a = _run(attn, x, text, id_embeds=a)
    only_b = _run(attn, x, text, id_embeds=b)
    lpos = left.flatten().bool()
    torch.testing.assert_close(both[:, lpos], only_a[:, lpos], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[:, ~lpos], only_b[:, ~lpos], atol=1e-5, rtol=1e-5)
    # swapped masks route the other way: the left region then carries b, not a
    swapped = _run(attn, x, text, id_embeds=torch.stack([a, b], dim=1), id_masks=masks.flip(1))
    assert not torch.allclose(swapped[:, lpos], only_a[:, lpos], atol=1e-3)
    torch.testing.assert_close(swapped[:, lpos], only_b[:, lpos], atol=1e-5, rtol=1e-5)


def test_several_identities_without_masks_is_refused(layer):
    attn, _, x, text = layer
    with pytest.raises(ValueError, match="id_masks"):
        _run(attn, x, text, id_embeds=torch.randn(2, 2, T, D))


def test_same_masks_give_the_same_result_as_diffusers_ip_adapter(layer):
    """The IP-Adapter baseline with diffusers' own ip_adapter_masks == our masked attention."""
    attn, proc, x, text = layer
    ipa = IPAdapterAttnProcessor2_0(attn.to_k.out_features, D, num_tokens=(T,), scale=1.0)
    ipa.to_k_ip[0].weight.data.copy_(proc.to_k_id.weight)
    ipa.to_v_ip[0].weight.data.copy_(proc.to_v_id.weight)
    a, b = torch.randn(T, D), torch.randn(T, D)
    left = torch.zeros(H, W)
    left[:, :2] = 1
    masks = torch.stack([left, 1 - left])
    embeds, kwargs = ip_adapter_multi_id_inputs([a, b], masks, do_classifier_free_guidance=True)
    assert embeds[0].shape == (2, 2, T, D)
    ours = _run(attn, x, text, id_embeds=torch.stack([a, b])[None].expand(2, -1, -1, -1),
                id_masks=masks[None])  # fmt: skip
    attn.set_processor(ipa)
    ip_states = embeds[0][1:].expand(2, -1, -1, -1)  # the conditional half, per sample
    theirs = _run(attn, x, (text, [ip_states]), ip_adapter_masks=kwargs["ip_adapter_masks"])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_capture_records_head_averaged_id_probabilities(layer):
    attn, _, x, text = layer
    cap = IDAttentionCapture(aspect_hw=(8, 8))
    _run(attn, x, text, id_embeds=torch.randn(2, T, D), id_capture=cap)
    (m,) = cap.maps
    assert m.shape == (2, T, H, W)
    torch.testing.assert_close(m.sum(dim=1), torch.ones(2, H, W))  # a softmax over T tokens
    small = IDAttentionCapture(aspect_hw=(8, 8), min_size=8)
    _run(attn, x, text, id_embeds=torch.randn(2, T, D), id_capture=small)
    assert small.maps == []  # a 4x4 layer is below the 8x8 threshold


def test_mask_downsampling_keeps_the_aspect():
    assert layer_hw(32, (64, 128)) == (4, 8)
    m = torch.zeros(1, 1, 16, 32)
    m[..., :16] = 1
    d = downsample_masks(m, 8)
    assert d.shape == (1, 1, 8)
    assert d.view(2, 4)[:, :2].eq(1).all() and d.view(2, 4)[:, 2:].eq(0).all()
