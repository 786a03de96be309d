"""RepControlNet: Eq. 5 init, Eq. 6 merge, merged == two-branch after training, parameter count."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from instantportrait.components import build_components, count_parameters
from instantportrait.models.rep_controlnet import (
    RepControlNet,
    RepLayer,
    adapter_injection,
    merge_weights,
)
from instantportrait.multi_id_attention import ExternalIDAttnProcessor


@pytest.fixture(scope="module")
def base_unet():
    return build_components("tiny", seed=0, in_channels=4)["unet"].float()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.tensor([10, 700]),
        torch.randn(2, 77, 32, generator=g),
        torch.rand(2, 3, 64, 64, generator=g),
        torch.randn(2, 4, 32, generator=g),
    )


def test_merge_weights_by_hand():
    base, branch = torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])
    assert torch.equal(merge_weights(base, branch), torch.tensor([11.0, 22.0]))
    assert torch.equal(merge_weights(base, branch, alpha=2.0, beta=0.5), torch.tensor([7.0, 14.0]))


def test_rep_layer_starts_at_one_point_one_times_the_base():
    lin = nn.Linear(3, 2)
    x = torch.randn(5, 3)
    ref = lin(x)
    rep = RepLayer(copy.deepcopy(lin), 0.1)
    assert torch.allclose(rep(x), 1.1 * ref, atol=1e-6)
    assert not rep.base.weight.requires_grad and rep.branch.weight.requires_grad
    assert torch.allclose(rep.merged()(x), 1.1 * ref, atol=1e-6)
    assert torch.equal(rep.merged(1.0, 0.0).weight, lin.weight)


def _trained(base_unet, inject_at, steps=3):
    torch.manual_seed(0)
    rep = RepControlNet(
        copy.deepcopy(base_unet), inject_at=inject_at, adapter_channels=(8, 16, 16, 32)
    )
    opt = torch.optim.Adam(rep.trainable_parameters(), lr=1e-3)
    x, t, txt, cond, ids = _inputs()
    for _ in range(steps):
        loss = rep(x, t, txt, cond, ids).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rep


@pytest.mark.parametrize("inject_at", ["conv_in_output", "latent_input"])
def test_merged_equals_two_branch_after_training(base_unet, inject_at):
    rep = _trained(base_unet, inject_at)
    # training moved the copies, the adapter's zero output conv and the ID projections
    assert rep.adapter.conv_out.weight.abs().sum() > 0
    x, t, txt, cond, ids = _inputs(seed=1)
    with torch.no_grad():
        two = rep(x, t, txt, cond, ids)
        merged = rep.merge()
        with adapter_injection(merged, rep.adapter(cond), inject_at):
            one = merged(x, t, txt, cross_attention_kwargs={"id_embeds": ids}).sample
    rel = ((one - two).norm() / two.norm()).item()
    assert rel <= 1e-5, rel  # measured ~1.5e-6 in fp32
    # and the adapter and the ID term matter: without them the output differs
    with torch.no_grad():
        bare = merged(x, t, txt, cross_attention_kwargs={"id_embeds": None}).sample
    assert ((bare - two).norm() / two.norm()) > 1e-3


def test_merged_model_has_the_base_shapes_and_parameter_count(base_unet):
    from diffusers import UNet2DConditionModel

    rep = _trained(base_unet, "conv_in_output", steps=1)
    merged = rep.merge()
    assert type(merged) is UNet2DConditionModel
    assert not any(isinstance(m, RepLayer) for m in merged.modules())
    base_shapes = {k: v.shape for k, v in base_unet.state_dict().items()}
    merged_shapes = {k: v.shape for k, v in merged.state_dict().items()}
    assert merged_shapes == base_shapes
    n_base = count_parameters(base_unet)
    total = count_parameters(merged) + count_parameters(rep.id_projections)
    total += count_parameters(rep.adapter)
    expected_id = sum(
        2 * 32 * m.to_k.out_features for n, m in base_unet.named_modules() if n.endswith("attn2")
    )
    assert count_parameters(rep.id_projections) == expected_id
    assert total == n_base + expected_id + count_parameters(rep.adapter)
    # beta = 0 folds nothing in: the base's weights exactly
    plain = rep.merge(1.0, 0.0)
    for (k, a), b in zip(plain.state_dict().items(), base_unet.state_dict().values()):
        assert torch.equal(a, b), k


def test_id_attention_against_a_hand_written_reference(base_unet):
    rep = RepControlNet(copy.deepcopy(base_unet), adapter_channels=(8, 16, 16, 32))
    name, attn = next((n, m) for n, m in rep.unet.named_modules() if n.endswith("attn2"))
    proc = attn.processor
    assert isinstance(proc, ExternalIDAttnProcessor)
    torch.nn.init.normal_(proc.to_v_id.weight)
    h = torch.randn(2, 16, attn.to_q.base.in_features)
    ctx, ids = torch.randn(2, 77, 32), torch.randn(2, 4, 32)

    def heads_attention(q, k, v):
        b, n, c = q.shape
        nh = attn.heads
        q, k, v = (x.reshape(b, -1, nh, c // nh).transpose(1, 2) for x in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) / (c // nh) ** 0.5, dim=-1)
        return (w @ v).transpose(1, 2).reshape(b, n, c)

    with torch.no_grad():
        q = attn.to_q(h)
        text = heads_attention(q, attn.to_k(ctx), attn.to_v(ctx))
        idt = heads_attention(q, proc.to_k_id(ids), proc.to_v_id(ids))
        want = attn.to_out[0](text + idt)
        got = attn(h, encoder_hidden_states=ctx, id_embeds=ids)
        assert torch.allclose(got, want, atol=1e-5)
        no_id = attn(h, encoder_hidden_states=ctx, id_embeds=None)
        assert torch.allclose(no_id, attn.to_out[0](text), atol=1e-5)
