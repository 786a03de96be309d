"""Qwen-Image-Edit as an edit backbone: true CFG's rescale by hand, the teacher equal to
diffusers' QwenImageEditPipeline on the same tiny components and seeds (true CFG on), the
one-step student at sigma = 1, the processor without torchvision, and the tiny bundle in the
published layout.

Parity tolerance: the two pipelines run the same modules on the same tensors in the same
order (float32, CPU), so they agree bit for bit; the bound is 1e-6 rather than 0 only so a
harmless reordering of an elementwise operation would not fail it. A real difference (a
dropped CFG branch, the wrong sigma, image tokens in the wrong place) moves the output by
1e-3 or more.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

PROMPT = "make it a watercolor painting"
SIZE = (96, 64)  # width, height: 6 x 4 packed tokens, a non-square case


def test_true_cfg_by_hand():
    from instantportrait.backbones.qwen_edit import true_cfg

    # parallel: the guided [6, 8] (norm 10) is scaled back to the prompt branch's norm 5
    got = true_cfg(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[0.0, 0.0]]]), 2.0)
    torch.testing.assert_close(got, torch.tensor([[[3.0, 4.0]]]))
    # v_u + 2 (v_c - v_u) = [0, 1] + 2 [1, -1] = [2, -1], norm sqrt(5), rescaled to norm 1
    cond, uncond = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])
    want = torch.tensor([[[2.0, -1.0]]]) / math.sqrt(5)
    torch.testing.assert_close(true_cfg(cond, uncond, 2.0), want)
    # the norm is per token (last axis), and the branches are not interchangeable
    two = true_cfg(torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]), torch.zeros(1, 2, 2), 5.0)
    torch.testing.assert_close(two, torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]))
    swapped = true_cfg(uncond, cond, 2.0)
    assert float((swapped - want).abs().max()) > 0.5


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(1)
    w, h = SIZE
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


def _reference(parts, photo, steps, monkeypatch, **over):
    """diffusers' own pipeline; its edit image is resized to about 1 MP whatever the output
    size (``calculate_dimensions``), so the test sets that target to the photo's size: the
    algorithm is diffusers', only the size is small."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as module
    from diffusers import QwenImageEditPipeline

    monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: (*SIZE, None))
    ref = QwenImageEditPipeline(**{**parts, **over})
    ref.set_progress_bar_config(disable=True)
    return ref(
        image=photo, prompt=PROMPT, negative_prompt="blurry", true_cfg_scale=4.0,
        num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt",
    ).images  # fmt: skip


def _ours(parts, photo, steps, **kw):
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    pipe = QwenEditPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    kw = {"guidance_scale": 4.0, "negative_prompt": "blurry", **kw}
    g = torch.Generator().manual_seed(0)
    return pipe(
        PROMPT, photo, num_inference_steps=steps, generator=g, output_type="pt", **kw
    ).images


def test_teacher_equals_diffusers_qwen_image_edit(qwen_parts, photo, monkeypatch):
    """4 steps with true CFG: the VL prompt encoding with the image, the image latents on the
    sequence, the exponential shift and terminal stretch, both CFG branches and the rescale,
    the Euler steps and the decoding, against diffusers' own."""
    ref = _reference(qwen_parts, photo, 4, monkeypatch)
    ours = _ours(qwen_parts, photo, 4)
    assert ours.shape == ref.shape == (1, 3, 64, 96)
    assert float((ours - ref).abs().max()) <= 1e-6


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_one_step_student_equals_one_euler_step_of_diffusers(qwen_parts, photo, monkeypatch):
    """diffusers' one step with the published scheduler is NaN (the terminal stretch divides by
    1 - sigma_last = 0); with the stretch off, its one Euler step from sigma 1 to 0 is
    x - v_hat, the student's x0_hat; true CFG on in both."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from instantportrait.backbones.qwen_edit_components import QWEN_EDIT_SCHEDULER_CONFIG

    published = _reference(qwen_parts, photo, 1, monkeypatch)
    assert torch.isnan(published).all()
    plain = FlowMatchEulerDiscreteScheduler(
        **{**QWEN_EDIT_SCHEDULER_CONFIG, "shift_terminal": None}
    )
    ref = _reference(qwen_parts, photo, 1, monkeypatch, scheduler=plain)
    ours = _ours(qwen_parts, photo, 1)
    assert float((ours - ref).abs().max()) <= 1e-6


def test_one_step_is_x0_hat_at_sigma_one_and_cfg_reaches_it(qwen_parts, photo):
    """The student's single call, x0_hat = eps - v_hat(eps, sigma=1) with v_hat the true-CFG
    combination, computed here from the backbone's parts; guidance 1 (one branch) differs."""
    from instantportrait.backbones.qwen_edit import true_cfg
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    pipe = QwenEditPipeline(**qwen_parts)
    bb = pipe.backbone
    noise = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(5))
    got = pipe(PROMPT, photo, num_inference_steps=1, latents=noise, negative_prompt="blurry",
               output_type="latent").images  # fmt: skip
    with torch.no_grad():
        cond = bb.encode_prompt([PROMPT], [photo], ["blurry"])
        z_img = bb.encode_image(pipe.image_processor.preprocess(photo, 64, 96))
        tokens = torch.cat([_pack(noise), _pack(z_img)], dim=1)

        def branch(c):
            return bb.transformer(
                hidden_states=tokens, timestep=torch.ones(1), encoder_hidden_states=c.prompt_embeds,
                encoder_hidden_states_mask=c.mask, img_shapes=[[(1, 4, 6), (1, 4, 6)]],
                return_dict=False,
            )[0][:, :24]  # fmt: skip

        v = _unpack(true_cfg(branch(cond), branch(cond.negative), 4.0))
    torch.testing.assert_close(got, noise - v, atol=1e-5, rtol=0)
    plain = pipe(PROMPT, photo, num_inference_steps=1, latents=noise, guidance_scale=1.0,
                 output_type="latent").images  # fmt: skip
    assert float((plain - got).abs().max()) > 1e-3


def _pack(z):
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)


def _unpack(t, h=8, w=12):
    b, _, d = t.shape
    return t.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, h, w)


def test_the_edit_image_reaches_both_encoders(qwen_parts, photo):
    """Another image changes the VL condition and the image latents (a backbone that dropped
    either still matches diffusers only if both ignored it)."""
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    pipe = QwenEditPipeline(**qwen_parts)
    other = Image.new("RGB", photo.size, (250, 10, 10))
    a = pipe.backbone.encode_prompt([PROMPT], [photo]).prompt_embeds
    b = pipe.backbone.encode_prompt([PROMPT], [other]).prompt_embeds
    assert a.shape == b.shape and float((a - b).abs().max()) > 1e-4
    base, changed = _ours(qwen_parts, photo, 2), _ours(qwen_parts, other, 2)
    assert float((base - changed).abs().max()) > 1e-4


def test_processor_expands_the_vision_tokens_without_torchvision(qwen_parts, photo):
    """Qwen2-VL's processing: the 96 x 64 image is resized to multiples of 28 (84 x 56), cut
    into 14 px patches (6 x 4 = 24, each 3 x 2 frames x 14 x 14 = 1176 values) and merged 2 x 2
    into 6 ``<|image_pad|>`` tokens."""
    proc = qwen_parts["processor"]
    out = proc(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[photo],
               return_tensors="pt")  # fmt: skip
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert tuple(out["pixel_values"].shape) == (24, 1176)
    pad = qwen_parts["tokenizer"].convert_tokens_to_ids("<|image_pad|>")
    assert int((out["input_ids"] == pad).sum()) == 6


def test_tiny_bundle_is_the_published_layout(qwen_edit_dir):
    from instantportrait.backbones import is_kontext_folder, is_qwen_edit_folder
    from instantportrait.backbones.qwen_edit import PROMPT_TEMPLATE, PROMPT_TEMPLATE_DROP
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    folder = qwen_edit_dir
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPipeline"
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert is_qwen_edit_folder(folder) and not is_kontext_folder(folder)
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["max_shift"], sched["max_image_seq_len"], sched["shift_terminal"]) == (
        0.9,
        8192,
        0.02,
    )
    assert sched["time_shift_type"] == "exponential" and sched["use_dynamic_shifting"] is True
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["z_dim"] == len(vae["latents_mean"]) == len(vae["latents_std"]) == 16
    assert vae["latents_std"][0] == 2.8184 and len(vae["temperal_downsample"]) == 3
    proc = json.loads((folder / "processor" / "processor_config.json").read_text())
    assert proc["processor_class"] == "Qwen2VLProcessor"
    pipe = QwenEditPipeline.from_pretrained(folder)
    assert pipe.transformer.config.in_channels == 64 and not pipe.transformer.config.guidance_embeds
    assert pipe.recommended_steps == 50 and pipe.default_guidance_scale == 4.0
    # the system prompt is 64 tokens under the tiny tokenizer too, so the drop keeps the turn
    head = PROMPT_TEMPLATE.split("<|vision_start|>")[0]
    assert len(pipe.tokenizer(head).input_ids) == PROMPT_TEMPLATE_DROP


def test_published_configs_give_the_published_parameter_counts():
    """On the meta device: the 20B transformer (Qwen-Image's 20.43B) and Qwen2.5-VL-7B-Instruct
    (8.29B with its vision tower, as its model page counts); a wrong width, depth or head count
    in the copied configs moves these by far more than the bounds."""
    from instantportrait.backbones.qwen_edit_components import build_qwen_edit_components

    with torch.device("meta"):
        parts = build_qwen_edit_components("real")

    def billions(module):
        return sum(p.numel() for p in module.parameters()) / 1e9

    assert 20.3 < billions(parts["transformer"]) < 20.5
    assert 8.2 < billions(parts["text_encoder"]) < 8.35
