"""Qwen-Image-Edit folders through the entry points that load an editor: ``edit --model``
(teacher steps, true CFG with a negative prompt, style boost), the evaluation harness's
``edit`` kind, the app's loader, and ``models check``; each output equals the pipeline called
by hand with the same arguments, so a wrong branch (a dropped negative prompt or guidance, the
student for the teacher) shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main

PROMPT = "make it a watercolor painting"


def _direct(folder, image, steps, **kw):
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    pipe = QwenEditPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, image, num_inference_steps=steps, resolution=64,
                generator=torch.Generator("cpu").manual_seed(0), **kw).images[0]  # fmt: skip


@pytest.fixture(scope="module")
def portrait(astronaut_path):
    return Image.open(astronaut_path).convert("RGB")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edit_cli_teacher_true_cfg_negative_prompt_and_style_boost(
    qwen_edit_dir, portrait, astronaut_path, tmp_path, capsys
):
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", qwen_edit_dir, "--prompt",
                        PROMPT, "--steps", 2, "--guidance-scale", 6, "--negative-prompt",
                        "blurry", "--iterations", 2, "--resolution", 64,
                        "-o", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    want = _direct(qwen_edit_dir, portrait, 2, guidance_scale=6.0, negative_prompt="blurry",
                   iterations=2)  # fmt: skip
    assert got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got, np.asarray(want))
    # the negative prompt reached the model (the folder's default is " ")
    other = _direct(qwen_edit_dir, portrait, 2, guidance_scale=6.0, iterations=2)
    assert np.abs(np.asarray(other, float) - got).max() > 0


@pytest.mark.parametrize(
    "extra", [["--image-guidance-scale", "2"], ["--speed", "fast"], ["--tiny-vae", "x"]]
)
def test_edit_cli_refuses_instructpix2pix_options_in_one_line(
    qwen_edit_dir, astronaut_path, tmp_path, capsys, extra
):
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", qwen_edit_dir, "--prompt",
                        PROMPT, *extra, "-o", tmp_path / "o")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and extra[0] in err
    assert "Qwen-Image-Edit" in err and not (tmp_path / "o").exists()


def test_broken_qwen_folder_is_one_line(qwen_edit_dir, tmp_path):
    import shutil

    from instantportrait.errors import ModelNotFoundError
    from instantportrait.pipelines import load_edit_pipeline

    broken = tmp_path / "broken"
    shutil.copytree(qwen_edit_dir, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ModelNotFoundError, match="Qwen-Image-Edit folder") as info:
        load_edit_pipeline(broken)
    assert "\n" not in str(info.value)


def test_evaluation_edit_kind_and_the_app_take_a_qwen_folder(qwen_edit_dir, portrait):
    from instantportrait.app.handlers import edit_portrait
    from instantportrait.app.models import load_edit_pipeline
    from instantportrait.evaluation.methods import build_method
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    method = build_method(f"edit:{qwen_edit_dir},steps=1,resolution=64")
    method.check()
    got = method.generate(portrait, PROMPT, seed=0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(_direct(qwen_edit_dir, portrait, 1)))
    assert build_method(f"edit:{qwen_edit_dir}").steps == 50  # the model card's count
    pipe = load_edit_pipeline(str(qwen_edit_dir), torch.device("cpu"), torch.float32)
    assert isinstance(pipe, QwenEditPipeline)
    # the app's Edit handler (and the ComfyUI edit node, which calls it) with style boost
    result = edit_portrait(pipe, portrait, PROMPT, steps=1, iterations=2, seed=0, resolution=64,
                           measure_identity=False)  # fmt: skip
    want = _direct(qwen_edit_dir, portrait, 1, iterations=2)
    np.testing.assert_array_equal(np.asarray(result.images[0]), np.asarray(want))


def test_models_check_identifies_a_qwen_folder(qwen_edit_dir, tmp_path, capsys):
    import json

    from instantportrait.model_check import identify

    assert identify(qwen_edit_dir).kind == "qwen-image-edit"
    assert main(["models", "check", str(qwen_edit_dir), "--for", "edit"]) == 0
    out = capsys.readouterr().out
    assert "Qwen-Image-Edit pipeline" in out and "fits edit" in out
    # the text-to-image Qwen-Image is told apart, and does not fit `edit`
    t2i = tmp_path / "qwen-image"
    t2i.mkdir()
    (t2i / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    assert identify(t2i).kind == "qwen-image"
    assert main(["models", "check", str(t2i), "--for", "edit"]) == 2
    assert "Qwen-Image pipeline" in capsys.readouterr().err


def test_the_registry_hub_id_loads_from_the_cache_offline(
    hub_cache, qwen_edit_dir, portrait, astronaut_path, tmp_path, capsys
):
    """``--model Qwen/Qwen-Image-Edit`` (the registry's source) with the folder in the Hugging
    Face cache is recognised as Qwen-Image-Edit: its InstructPix2Pix-only options are refused,
    and it edits as the folder does."""
    from instantportrait.pipelines import load_edit_pipeline
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    hub_cache("Qwen/Qwen-Image-Edit", qwen_edit_dir)
    assert isinstance(load_edit_pipeline("Qwen/Qwen-Image-Edit"), QwenEditPipeline)
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", "Qwen/Qwen-Image-Edit",
                        "--prompt", PROMPT, "--image-guidance-scale", 2,
                        "-o", tmp_path / "x")  # fmt: skip
    assert code == 2 and "Qwen-Image-Edit" in err
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", "Qwen/Qwen-Image-Edit",
                        "--prompt", PROMPT, "--steps", 1, "--resolution", 64,
                        "-o", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    np.testing.assert_array_equal(got, np.asarray(_direct(qwen_edit_dir, portrait, 1)))


def test_lora_file_and_exported_student_through_edit(
    qwen_edit_dir, portrait, astronaut_path, tmp_path, capsys
):
    """A LoRA on the Qwen transformer (the Kontext adapter helpers: attention q/k/v/out of
    both streams) saved as a diffusers LoRA file: ``edit --lora`` equals the adapter-on
    pipeline; the fused one-step student folder runs in one step by default and equals it
    too."""
    from instantportrait.backbones.kontext_adapters import add_adapter, export_student, save_adapter
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    pipe = QwenEditPipeline.from_pretrained(qwen_edit_dir)
    pipe.set_progress_bar_config(disable=True)
    add_adapter(pipe.transformer, "student", rank=4, init_lora_weights=False)
    save_adapter(pipe.transformer, "student", tmp_path / "lora")
    want = pipe(PROMPT, portrait, num_inference_steps=1, resolution=64,
                generator=torch.Generator("cpu").manual_seed(0)).images[0]  # fmt: skip
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", qwen_edit_dir, "--prompt",
                        PROMPT, "--steps", 1, "--resolution", 64, "--lora", tmp_path / "lora",
                        "-o", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    np.testing.assert_array_equal(got, np.asarray(want))
    assert np.abs(np.asarray(_direct(qwen_edit_dir, portrait, 1), float) - got).max() > 0
    student = export_student(pipe, "student", tmp_path / "student")
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", student, "--prompt", PROMPT,
                        "--resolution", 64, "-o", tmp_path / "s")  # fmt: skip
    assert code == 0, err
    one = np.asarray(Image.open(tmp_path / "s" / "astronaut.png"), float)
    assert np.abs(one - np.asarray(want, float)).max() <= 1  # fused vs adapter: rounding
