"""Kontext folders through every entry point that loads an editor: ``edit --model`` (the
teacher, an exported one-step student), the evaluation harness's ``edit`` kind, the app's
loader and Edit handler, and the ComfyUI nodes; each output equals the pipeline called by hand
with the same arguments, so a wrong branch (teacher for student, a dropped guidance or style
boost) shows."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main

PROMPT = "make it a watercolor painting"
ROOT = Path(__file__).resolve().parents[2]


def _direct(folder, image, steps, **kw):
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = KontextEditPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, image, num_inference_steps=steps, resolution=64,
                generator=torch.Generator("cpu").manual_seed(0), **kw).images[0]  # fmt: skip


@pytest.fixture(scope="module")
def portrait(astronaut_path):
    return Image.open(astronaut_path).convert("RGB")


@pytest.fixture(scope="module")
def student_dir(kontext_dir, tmp_path_factory):
    """A one-step student exported from the tiny teacher with a non-zero adapter."""
    from instantportrait.backbones.kontext_adapters import add_adapter, export_student
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = KontextEditPipeline.from_pretrained(kontext_dir)
    add_adapter(pipe.transformer, "student", rank=4, init_lora_weights=False)
    return export_student(pipe, "student", tmp_path_factory.mktemp("student") / "s")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edit_cli_teacher_steps_guidance_and_style_boost(
    kontext_dir, portrait, astronaut_path, tmp_path, capsys
):
    code, out, err = _cli(capsys, "edit", astronaut_path, "--model", kontext_dir, "--prompt",
                          PROMPT, "--steps", 2, "--guidance-scale", 6, "--iterations", 2,
                          "--resolution", 64, "-o", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    want = _direct(kontext_dir, portrait, 2, guidance_scale=6.0, iterations=2)
    assert got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got, np.asarray(want))
    other = _direct(kontext_dir, portrait, 2, guidance_scale=2.5, iterations=2)
    assert np.abs(np.asarray(other, float) - got).max() > 0  # the guidance reached the model


def test_edit_cli_runs_an_exported_student_in_one_step(
    student_dir, portrait, astronaut_path, tmp_path, capsys
):
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", student_dir, "--prompt",
                        PROMPT, "--resolution", 64, "-o", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    np.testing.assert_array_equal(got, np.asarray(_direct(student_dir, portrait, 1)))


@pytest.mark.parametrize(
    "extra",
    [["--image-guidance-scale", "2"], ["--negative-prompt", "blurry"], ["--speed", "fast"]],
)
def test_edit_cli_refuses_instructpix2pix_options_in_one_line(
    kontext_dir, astronaut_path, tmp_path, capsys, extra
):
    code, out, err = _cli(capsys, "edit", astronaut_path, "--model", kontext_dir, "--prompt",
                          PROMPT, *extra, "-o", tmp_path / "o")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and extra[0] in err
    assert not (tmp_path / "o").exists()


def test_broken_kontext_folder_is_one_line(kontext_dir, tmp_path):
    import shutil

    from instantportrait.errors import ModelNotFoundError
    from instantportrait.pipelines import load_edit_pipeline

    broken = tmp_path / "broken"
    shutil.copytree(kontext_dir, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ModelNotFoundError, match="FLUX.1 Kontext folder") as info:
        load_edit_pipeline(broken)
    assert "\n" not in str(info.value)


def test_evaluation_edit_kind_loads_kontext(kontext_dir, student_dir, portrait):
    from instantportrait.components import count_parameters
    from instantportrait.evaluation.methods import build_method

    method = build_method(f"edit:{kontext_dir},steps=1,resolution=64")
    method.check()
    got = method.generate(portrait, PROMPT, seed=0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(_direct(kontext_dir, portrait, 1)))
    cost = method.cost()
    assert cost == {"params": count_parameters(method.pipe.transformer), "steps": 1}
    assert build_method(f"edit:{kontext_dir}").steps == 28  # the teacher's own count
    assert build_method(f"edit:{student_dir}").steps == 1


def test_app_loader_and_edit_handler(student_dir, portrait):
    from instantportrait.app.handlers import edit_portrait
    from instantportrait.app.models import load_edit_pipeline
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = load_edit_pipeline(str(student_dir), torch.device("cpu"), torch.float32)
    assert isinstance(pipe, KontextEditPipeline)
    result = edit_portrait(pipe, portrait, PROMPT, steps=None, seed=0, resolution=64,
                           measure_identity=False)  # fmt: skip
    want = _direct(student_dir, portrait, 1)
    np.testing.assert_array_equal(np.asarray(result.images[0]), np.asarray(want))


def test_comfyui_nodes_take_a_kontext_folder(kontext_dir, portrait):
    sys.path.insert(0, str(ROOT))
    try:
        pack = importlib.import_module("comfyui")
    finally:
        sys.path.remove(str(ROOT))
    nodes = pack.NODE_CLASS_MAPPINGS
    loader, editor = nodes["InstantPortraitLoader"](), nodes["InstantPortraitEdit"]()
    (pipe,) = getattr(loader, loader.FUNCTION)(str(kontext_dir), "cpu", "float32")
    small = portrait.resize((64, 64))
    batch = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None]
    (out,) = getattr(editor, editor.FUNCTION)(
        pipe, batch, PROMPT, steps=1, style_boost=2, seed=0, resolution=64
    )
    want = _direct(kontext_dir, small, 1, iterations=2)
    np.testing.assert_allclose(out[0].numpy() * 255.0, np.asarray(want), atol=1e-3)


def test_edit_video_refuses_a_kontext_folder_in_one_line(kontext_dir, tmp_path, capsys):
    pytest.importorskip("av")
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_video import synthetic_frames, write_clip
    finally:
        sys.path.remove(str(ROOT / "tests"))
    clip = write_clip(tmp_path / "in.mp4", synthetic_frames())
    code, _, err = _cli(capsys, "edit-video", clip, "-o", tmp_path / "out.mp4", "--model",
                        kontext_dir, "--prompt", PROMPT, "--device", "cpu")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Kontext" in err
    assert not (tmp_path / "out.mp4").exists()


def test_edit_cli_lora_on_kontext_equals_the_adapter(
    kontext_dir, portrait, astronaut_path, tmp_path, capsys
):
    from instantportrait.backbones.kontext_adapters import add_adapter, save_adapter
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = KontextEditPipeline.from_pretrained(kontext_dir)
    pipe.set_progress_bar_config(disable=True)
    add_adapter(pipe.transformer, "ide", rank=4, init_lora_weights=False)
    save_adapter(pipe.transformer, "ide", tmp_path / "lora")
    want = pipe(PROMPT, portrait, num_inference_steps=1, resolution=64,
                generator=torch.Generator("cpu").manual_seed(0)).images[0]  # fmt: skip
    code, _, err = _cli(capsys, "edit", astronaut_path, "--model", kontext_dir, "--prompt",
                        PROMPT, "--steps", 1, "--resolution", 64, "--lora", tmp_path / "lora",
                        "-o", tmp_path / "o")  # fmt: skip
    assert code == 0, err
    got = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    np.testing.assert_array_equal(got, np.asarray(want))
    base = _direct(kontext_dir, portrait, 1)
    assert np.abs(np.asarray(base, float) - got).max() > 0  # the LoRA changed the edit
