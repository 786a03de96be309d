"""Qwen-Image-Edit-2509/2511 (diffusers' ``QwenImageEditPlusPipeline``) through the same
backbone and editor with ``plus``: the teacher equal to diffusers' Plus pipeline on the same
tiny components and seeds (true CFG on; 2509's transformer and 2511's ``zero_cond_t`` one),
the student's one step, the ``Picture 1:`` template and the ~384 x 384 condition image checked
against diffusers' own ``encode_prompt``, and the folder through the entry points.

Sizes: diffusers' Plus pipeline encodes the VAE's image at about 1 MP whatever the output
size, this editor at the output size; the parity tests set diffusers' ``VAE_IMAGE_SIZE`` to
the photo's area (96 x 64 stays 96 x 64), where the two agree. The condition image is left
at diffusers' 384 x 384 area: 96 x 64 becomes 480 x 320 on both sides.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

PROMPT = "make it a watercolor painting"
SIZE = (96, 64)  # width, height
CONDITION = (480, 320)  # sqrt(384^2 * 1.5) = 470.3 -> 480; 313.5 -> 320 (multiples of 32)


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(1)
    w, h = SIZE
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module")
def parts_2511():
    """The tiny components with Qwen-Image-Edit-2511's ``zero_cond_t`` transformer."""
    from instantportrait.backbones.qwen_edit_components import build_qwen_edit_components

    return build_qwen_edit_components("tiny", seed=0, zero_cond_t=True)


def _parts(request, name):
    return request.getfixturevalue(name)


def _reference(parts, photo, steps, monkeypatch, **over):
    """diffusers' Plus pipeline, its VAE image area set to the output's (see module doc)."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as module
    from diffusers import QwenImageEditPlusPipeline

    monkeypatch.setattr(module, "VAE_IMAGE_SIZE", SIZE[0] * SIZE[1])
    ref = QwenImageEditPlusPipeline(**{**parts, **over})
    ref.set_progress_bar_config(disable=True)
    return ref(
        image=photo, prompt=PROMPT, negative_prompt="blurry", true_cfg_scale=4.0,
        num_inference_steps=steps, height=SIZE[1], width=SIZE[0], output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip


def _ours(parts, photo, steps, plus=True, **kw):
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    pipe = QwenEditPipeline(**parts, plus=plus)
    pipe.set_progress_bar_config(disable=True)
    kw = {"guidance_scale": 4.0, "negative_prompt": "blurry", **kw}
    g = torch.Generator().manual_seed(0)
    return pipe(
        PROMPT, photo, num_inference_steps=steps, generator=g, output_type="pt", **kw
    ).images


def test_condition_image_size_by_hand():
    from instantportrait.backbones.qwen_edit import condition_image_size

    assert condition_image_size(*SIZE) == CONDITION
    assert condition_image_size(1024, 1024) == (384, 384)
    # portrait 3:4: sqrt(147456 * 0.75) = 332.6 -> 320 (10.39 x 32); 443.4 -> 448 (13.86 x 32)
    assert condition_image_size(768, 1024) == (320, 448)


@pytest.mark.parametrize("parts", ["qwen_parts", "parts_2511"])
def test_plus_teacher_equals_diffusers_qwen_image_edit_plus(parts, photo, monkeypatch, request):
    """4 steps with true CFG on 2509's transformer and on 2511's (``zero_cond_t``): the
    Plus template and condition image through the VL encoder, the image latents on the
    sequence, the scheduler, both CFG branches and the rescale, the decoding."""
    parts = _parts(request, parts)
    ref = _reference(parts, photo, 4, monkeypatch)
    ours = _ours(parts, photo, 4)
    assert ours.shape == ref.shape == (1, 3, 64, 96)
    assert float((ours - ref).abs().max()) <= 1e-6


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_plus_one_step_student_equals_one_euler_step_of_diffusers(parts_2511, photo, monkeypatch):
    """As for the first release: with the terminal stretch off, diffusers' one Euler step from
    sigma 1 is x - v_hat, the student's x0_hat (2511's transformer, true CFG on)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from instantportrait.backbones.qwen_edit_components import QWEN_EDIT_SCHEDULER_CONFIG

    plain = FlowMatchEulerDiscreteScheduler(
        **{**QWEN_EDIT_SCHEDULER_CONFIG, "shift_terminal": None}
    )
    ref = _reference(parts_2511, photo, 1, monkeypatch, scheduler=plain)
    ours = _ours(parts_2511, photo, 1)
    assert not torch.isnan(ref).any()
    assert float((ours - ref).abs().max()) <= 1e-6


def test_plus_conditioning_is_diffusers_encode_prompt_on_the_condition_image(
    qwen_parts, photo, monkeypatch
):
    """What the editor hands the transformer as text condition equals diffusers' Plus
    ``encode_prompt`` on the photo resized to 480 x 320 (computed here by hand), for the
    prompt and the negative prompt; the first release's encoding of the same photo (other
    template, the 96 x 64 image) is another sequence."""
    from diffusers import QwenImageEditPlusPipeline

    from instantportrait.backbones.qwen_edit import QwenEditBackbone
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    seen = {}
    real = QwenEditBackbone.encode_prompt

    def spy(self, prompts, images, negatives=None):
        seen["sizes"] = [im.size for im in images]
        seen["cond"] = real(self, prompts, images, negatives)
        return seen["cond"]

    monkeypatch.setattr(QwenEditBackbone, "encode_prompt", spy)
    pipe = QwenEditPipeline(**qwen_parts, plus=True)
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, photo, num_inference_steps=2, negative_prompt="blurry", output_type="latent")
    assert seen["sizes"] == [CONDITION]
    ref = QwenImageEditPlusPipeline(**qwen_parts)
    condition = ref.image_processor.resize(photo, CONDITION[1], CONDITION[0])
    with torch.no_grad():
        want, _ = ref.encode_prompt(PROMPT, image=[condition], device="cpu")
        want_neg, _ = ref.encode_prompt("blurry", image=[condition], device="cpu")
    cond = seen["cond"]
    assert cond.prompt_embeds.shape == want.shape
    assert float((cond.prompt_embeds - want).abs().max()) == 0.0
    assert float((cond.negative.prompt_embeds - want_neg).abs().max()) == 0.0
    first = QwenEditBackbone(*[qwen_parts[k] for k in (
        "transformer", "vae", "text_encoder", "tokenizer", "processor")])  # fmt: skip
    old = first.encode_prompt([PROMPT], [photo]).prompt_embeds
    assert old.shape[1] < want.shape[1]  # 6 vision tokens at 96 x 64, ~190 at 480 x 320


def test_plus_differs_from_the_first_release(qwen_parts, photo, monkeypatch):
    """The same components as a first-release folder (diffusers' QwenImageEditPipeline, or
    this editor without ``plus``) give another edit: the Plus path is not the old one."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as module
    from diffusers import QwenImageEditPipeline

    monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: (*SIZE, None))
    old = QwenImageEditPipeline(**qwen_parts)
    old.set_progress_bar_config(disable=True)
    first = old(image=photo, prompt=PROMPT, negative_prompt="blurry", true_cfg_scale=4.0,
                num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="pt").images  # fmt: skip
    plus = _ours(qwen_parts, photo, 2)
    assert float((plus - first).abs().max()) > 1e-3
    assert float((_ours(qwen_parts, photo, 2, plus=False) - first).abs().max()) <= 1e-6


# ---------------------------------------------------------------------- the folder


def _direct(folder, image, steps, **kw):
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    pipe = QwenEditPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, image, num_inference_steps=steps, resolution=64,
                generator=torch.Generator("cpu").manual_seed(0), **kw).images[0]  # fmt: skip


def test_tiny_plus_bundle_is_the_2509_layout_and_loads_as_plus(qwen_edit_plus_dir, tmp_path):
    from instantportrait.backbones import is_qwen_edit_folder
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    folder = qwen_edit_plus_dir
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert is_qwen_edit_folder(folder)
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["max_shift"], sched["shift_terminal"], sched["time_shift_type"]) == (
        0.9,
        0.02,
        "exponential",
    )
    pipe = QwenEditPipeline.from_pretrained(folder)
    assert pipe.config.plus and pipe.backbone.plus
    assert pipe.recommended_steps == 40 and pipe.default_guidance_scale == 4.0
    assert pipe.config.default_negative_prompt == " "
    # saved by this editor, the folder keeps the Plus conditioning
    pipe.save_pretrained(tmp_path / "saved")
    again = QwenEditPipeline.from_pretrained(tmp_path / "saved")
    assert again.backbone.plus and again.recommended_steps == 40


def test_edit_cli_models_check_evaluation_and_app_take_a_plus_folder(
    qwen_edit_plus_dir, astronaut_path, tmp_path, capsys
):
    from instantportrait.app.models import load_edit_pipeline
    from instantportrait.cli import main
    from instantportrait.evaluation.methods import build_method
    from instantportrait.model_check import identify
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    portrait = Image.open(astronaut_path).convert("RGB")
    folder = qwen_edit_plus_dir
    assert identify(folder).kind == "qwen-image-edit"
    assert main(["models", "check", str(folder), "--for", "edit"]) == 0
    assert "QwenImageEditPlusPipeline" in capsys.readouterr().out
    code = main(["edit", str(astronaut_path), "--model", str(folder), "--prompt", PROMPT,
                 "--steps", "2", "--negative-prompt", "blurry", "--iterations", "2",
                 "--resolution", "64",
                 "-o", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    want = _direct(folder, portrait, 2, negative_prompt="blurry", iterations=2)
    np.testing.assert_array_equal(got, np.asarray(want))
    code = main(["edit", str(astronaut_path), "--model", str(folder), "--prompt", PROMPT,
                 "--image-guidance-scale", "2", "-o", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Qwen-Image-Edit" in err
    method = build_method(f"edit:{folder},steps=1,resolution=64")
    method.check()
    np.testing.assert_array_equal(
        np.asarray(method.generate(portrait, PROMPT, seed=0)),
        np.asarray(_direct(folder, portrait, 1)),
    )
    assert build_method(f"edit:{folder}").steps == 40  # the 2509 card's count
    pipe = load_edit_pipeline(str(folder), torch.device("cpu"), torch.float32)
    assert isinstance(pipe, QwenEditPipeline) and pipe.backbone.plus


def test_registry_names_the_2509_and_2511_hub_ids(hub_cache, qwen_edit_plus_dir):
    from instantportrait.model_sources import MODEL_SOURCES
    from instantportrait.pipelines import load_edit_pipeline

    by_source = {s.source: s for s in MODEL_SOURCES}
    for hub_id in ("Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image-Edit-2511"):
        entry = by_source[hub_id]
        assert entry.licence == "Apache-2.0" and entry.commercial == "yes"
        assert entry.family == "qwen-image-edit" and "edit" in entry.used_by
    hub_cache("Qwen/Qwen-Image-Edit-2509", qwen_edit_plus_dir)
    pipe = load_edit_pipeline("Qwen/Qwen-Image-Edit-2509")
    assert pipe.backbone.plus and pipe.recommended_steps == 40


def test_a_2511_folder_on_a_diffusers_without_zero_cond_t_is_one_line(qwen_edit_plus_dir, tmp_path):
    """A 2511-style folder (``zero_cond_t`` in the transformer config) loads with the flag on.
    The flag in the folder but not on the built transformer (what a diffusers older than the
    flag gives: it drops the unknown key) is refused; with the flag honoured, or absent from
    the folder, loading goes on."""
    import shutil
    from types import SimpleNamespace

    from instantportrait.errors import MissingDependencyError
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline, check_zero_cond_t

    folder = tmp_path / "2511"
    shutil.copytree(qwen_edit_plus_dir, folder)
    cfg = folder / "transformer" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "zero_cond_t": True}))
    pipe = QwenEditPipeline.from_pretrained(folder)
    assert pipe.transformer.zero_cond_t and pipe.backbone.plus
    bare = tmp_path / "bare"
    (bare / "transformer").mkdir(parents=True)
    config = bare / "transformer" / "config.json"
    config.write_text(json.dumps({"num_layers": 60, "zero_cond_t": True}))
    with pytest.raises(MissingDependencyError, match="zero_cond_t") as info:
        check_zero_cond_t(bare, SimpleNamespace())
    assert "\n" not in str(info.value)
    check_zero_cond_t(bare, SimpleNamespace(zero_cond_t=True))
    config.write_text(json.dumps({"num_layers": 60}))
    check_zero_cond_t(bare, SimpleNamespace())
