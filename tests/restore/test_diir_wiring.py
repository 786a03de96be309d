"""DIIR's wiring, each against an expectation computed apart from the code: features injected
at the step they were captured for, fusion only on the UNet's ``attn1`` layers, what fusion
does to those features, and the inversion/regeneration path by hand with a UNet that depends
on its input and its timestep."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.restoration.attention import SelfAttentionFusionProcessor


def _inputs(image: Image.Image):
    crop = image.crop((80, 30, 144, 94)).resize((64, 64))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 20:44] = 1.0
    return [crop], [Image.new("RGB", (64, 64))], mask


def _attn1_names(unet) -> set[str]:
    """The UNet's self-attention layers, found from its modules (not its processors)."""
    from diffusers.models.attention_processor import Attention

    return {n for n, m in unet.named_modules() if isinstance(m, Attention) and n.endswith("attn1")}


@pytest.fixture()
def spy(diir_pipe, monkeypatch):
    """Every fusion-processor call: (mode, the timestep the UNet was called with, layer, the
    key the store used, the layer's plain output, what it returned)."""
    calls = []
    unet_t = {}

    def pre_hook(module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        unet_t["now"] = sorted({int(v) for v in torch.as_tensor(t).reshape(-1)})

    handle = diir_pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    original = SelfAttentionFusionProcessor.__call__

    def recording(self, attn, hidden_states, *args, **kwargs):
        plain = self.inner(attn, hidden_states, *args)
        mode, key = self.store.mode, (int(self.store.timestep), self.name)
        out = original(self, attn, hidden_states, *args, **kwargs)
        calls.append(
            SimpleNamespace(
                mode=mode, unet_t=unet_t["now"], layer=self.name, key=key, plain=plain, out=out
            )
        )
        return out

    monkeypatch.setattr(SelfAttentionFusionProcessor, "__call__", recording)
    yield calls
    handle.remove()


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_features_are_injected_at_the_timestep_they_were_captured(
    guidance, diir_pipe, small_astronaut, spy
):
    crops, ctl, mask = _inputs(small_astronaut)
    diir_pipe("a face", crops, ctl, mask, num_inference_steps=3, guidance_scale=guidance)
    capture = [c for c in spy if c.mode == "capture"]
    inject = [c for c in spy if c.mode == "inject"]
    layers = _attn1_names(diir_pipe.unet)
    steps = [int(t) for t in diir_pipe.scheduler.timesteps]
    assert len(steps) == 3 and layers
    # each UNet call has one timestep, and the store's key is that timestep
    for c in spy:
        assert len(c.unet_t) == 1 and c.key == (c.unet_t[0], c.layer)
    # capture and injection pair up exactly: every (t, layer) once each, no stray call
    captured = sorted((c.unet_t[0], c.layer) for c in capture)
    injected = sorted((c.unet_t[0], c.layer) for c in inject)
    assert captured == injected == sorted((t, n) for t in steps for n in layers)
    # the feature injected is the one captured at that (t, layer): with CFG both branches
    for c in inject:
        source = next(x for x in capture if (x.unet_t[0], x.layer) == (c.unet_t[0], c.layer))
        assert c.plain.shape[0] == (2 if guidance > 1 else 1) * source.out.shape[0]


def test_fusion_sits_only_on_the_unet_self_attention_layers(diir_pipe):
    from instantportrait.restoration.attention import SelfAttentionStore, self_attention_fusion

    controlnet_before = dict(diir_pipe.controlnet.attn_processors)
    with self_attention_fusion(diir_pipe.unet, SelfAttentionStore()) as count:
        procs = diir_pipe.unet.attn_processors
        fused = {n.removesuffix(".processor") for n, p in procs.items()
                 if isinstance(p, SelfAttentionFusionProcessor)}  # fmt: skip
        assert fused == _attn1_names(diir_pipe.unet) and count == len(fused)
        assert all(p.name == n.removesuffix(".processor") for n, p in procs.items()
                   if isinstance(p, SelfAttentionFusionProcessor))  # fmt: skip
        assert diir_pipe.controlnet.attn_processors == controlnet_before  # the ControlNet: none


def test_injected_features_follow_the_mask(diir_pipe, small_astronaut, spy):
    """Outside the face (mask 0) a layer returns exactly the feature the inversion cached for
    that step; with the whole crop as face (mask 1, global statistics) it returns its own
    features renormalised to the cached per-channel mean and standard deviation (AdaIN)."""
    crops, ctl, _ = _inputs(small_astronaut)
    kw = dict(num_inference_steps=2, guidance_scale=5.0, fuse_latents=False)
    for fill in (0.0, 1.0):
        spy.clear()
        diir_pipe("a face", crops, ctl, torch.full((1, 1, 64, 64), fill), **kw)
        cached = {(c.unet_t[0], c.layer): c.out for c in spy if c.mode == "capture"}
        inject = [c for c in spy if c.mode == "inject"]
        assert inject
        for c in inject:
            want = cached[(c.unet_t[0], c.layer)].expand_as(c.out)  # both CFG branches
            if fill == 0.0:
                assert torch.equal(c.out, want)
            else:
                torch.testing.assert_close(c.out.mean(1), want.mean(1), atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(c.out.std(1), want.std(1), atol=1e-3, rtol=1e-3)
                assert not torch.allclose(c.out, want, atol=1e-3)  # its own features


class _LinearUNet(torch.nn.Module):
    """eps(z, t) = k(t) * z with k(t) = 0.2 + t / 1000: depends on the latent and the step."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a dtype/device

    @property
    def dtype(self):
        return self.anchor.dtype

    @property
    def device(self):
        return self.anchor.device

    @property
    def attn_processors(self):
        return {}

    def set_attn_processor(self, processors):
        assert processors == {}

    def forward(self, z, t, encoder_hidden_states=None, **kwargs):
        k = 0.2 + t.to(z.dtype).reshape(-1, 1, 1, 1) / 1000
        return SimpleNamespace(sample=k * z)


def test_inversion_and_regeneration_follow_ddim_by_hand(diir_pipe, small_astronaut):
    """The DDIM path (spec §4.3) in scalar arithmetic, float64, against the pipeline with a
    UNet whose prediction depends on its input and timestep: each step multiplies the latent
    by sqrt(a_to) (1 - sqrt(1 - a_from) k) / sqrt(a_from) + sqrt(1 - a_to) k. The inversion
    predicts at the higher timestep of each move; the regeneration at the step it leaves."""
    pipe = copy.copy(diir_pipe)
    object.__setattr__(pipe, "unet", _LinearUNet())
    crops, ctl, _ = _inputs(small_astronaut)
    out = pipe("a face", crops, ctl, torch.ones(1, 1, 64, 64), num_inference_steps=3,
               guidance_scale=1.0, fuse_latents=False, output_type="latent")  # fmt: skip
    sched = diir_pipe.scheduler
    acp = sched.alphas_cumprod.double().numpy()
    final = float(sched.final_alpha_cumprod)
    ts = [1, 334, 667]  # 3 DDIM steps of 1000, steps_offset 1 (the tiny bundle's scheduler)
    assert [int(t) for t in sched.timesteps] == ts[::-1]

    def move(a_from, a_to, t):
        k = 0.2 + t / 1000
        return (
            np.sqrt(a_to) * (1 - np.sqrt(1 - a_from) * k) / np.sqrt(a_from) + np.sqrt(1 - a_to) * k
        )

    z0 = out.inversion.latents[-1].double()
    factor, levels = 1.0, [final, *(acp[t] for t in ts)]
    for i, t in enumerate(ts):  # inversion: level i -> i+1, predicted at t
        factor *= move(levels[i], levels[i + 1], t)
        got = out.inversion.latents[t].double()
        torch.testing.assert_close(got, factor * z0, rtol=1e-5, atol=1e-6)
    for i, t in enumerate(ts[::-1]):  # regeneration: from t down to the next level
        factor *= move(levels[3 - i], levels[2 - i], t)
    torch.testing.assert_close(out.latents.double(), factor * z0, rtol=1e-5, atol=1e-6)
    assert abs(factor - 1) > 1e-3  # an input-dependent UNet: not a trivial round trip
