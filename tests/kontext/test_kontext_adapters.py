"""LoRA adapters on the Kontext transformer (one base, adapters switched by name): switching
changes the output, the base comes back exactly, a saved adapter is what diffusers'
load_lora_weights reads, and the fused student folder equals the adapter it was made from."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from instantportrait.backbones import kontext_adapters as A

PROMPT = "make it a watercolor painting"


@pytest.fixture()
def pipe():
    from instantportrait.backbones.kontext_components import build_kontext_components
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    p = KontextEditPipeline(**build_kontext_components("tiny", seed=0))
    p.set_progress_bar_config(disable=True)
    return p


PHOTO = Image.new("RGB", (48, 32), (120, 30, 200))


def _edit(p, steps=1):
    return p(PROMPT, PHOTO, num_inference_steps=steps, max_sequence_length=32,
             generator=torch.Generator().manual_seed(0), output_type="pt").images  # fmt: skip


def _differ(a, b) -> float:
    return float((a - b).abs().max())


def test_targets_are_the_blocks_attention_and_mlp_projections(pipe):
    names = A.lora_target_modules(pipe.transformer)
    # by hand: a double block has q/k/v/out for the image and the text stream (8) and two
    # linear layers in each feed-forward (4); a single block q/k/v, proj_mlp and proj_out (5)
    assert len(names) == 12 + 5
    assert "proj_out" not in names and "single_transformer_blocks.0.proj_out" in names
    assert "transformer_blocks.0.attn.to_add_out" in names
    assert not any("norm" in n or "embed" in n for n in names)


def test_switching_adapters_on_one_base(pipe):
    base = _edit(pipe)
    A.add_adapter(pipe.transformer, "ide", rank=4, init_lora_weights=False)  # B != 0
    ide = _edit(pipe)
    assert _differ(ide, base) > 1e-3
    A.add_adapter(pipe.transformer, "student", rank=4, init_from="ide")
    torch.testing.assert_close(_edit(pipe), ide, atol=0, rtol=0)  # the student starts as ide
    with torch.no_grad():  # a training step's worth of change to the student alone
        for name, p in pipe.transformer.named_parameters():
            if "lora_B.student" in name:
                p.add_(0.05 * torch.randn_like(p))
    student = _edit(pipe)
    assert _differ(student, ide) > 1e-3
    A.use_adapter(pipe.transformer, "ide")  # the teacher: ide on, student off
    torch.testing.assert_close(_edit(pipe), ide, atol=0, rtol=0)
    A.use_base(pipe.transformer)
    torch.testing.assert_close(_edit(pipe), base, atol=0, rtol=0)
    A.use_adapter(pipe.transformer, "student")
    torch.testing.assert_close(_edit(pipe), student, atol=0, rtol=0)
    # one set of base weights: two adapters added no second copy of any base layer
    bases = [n for n, _ in pipe.transformer.named_parameters() if "base_layer" in n]
    assert len(bases) == len(set(bases)) and not any("student" in n for n in bases)


def test_saved_adapter_loads_in_diffusers_kontext(pipe, tmp_path):
    from diffusers import FluxKontextPipeline

    from instantportrait.backbones.kontext_components import build_kontext_components

    A.add_adapter(pipe.transformer, "ide", rank=4, init_lora_weights=False)
    ours = _edit(pipe, steps=2)
    path = A.save_adapter(pipe.transformer, "ide", tmp_path / "ide")
    assert path.name == "pytorch_lora_weights.safetensors" and path.is_file()
    ref = FluxKontextPipeline(**build_kontext_components("tiny", seed=0))
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(tmp_path / "ide"), adapter_name="ide")
    theirs = ref(image=PHOTO, prompt=PROMPT, num_inference_steps=2, guidance_scale=2.5,
                 height=32, width=48, max_area=32 * 48, _auto_resize=False,
                 max_sequence_length=32, generator=torch.Generator().manual_seed(0),
                 output_type="pt").images  # fmt: skip
    assert _differ(ours, theirs) <= 1e-4


def test_fused_student_folder_equals_the_adapter(pipe, tmp_path):
    from instantportrait.pipelines import load_edit_pipeline
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    A.add_adapter(pipe.transformer, "student", rank=4, init_lora_weights=False)
    adapted = _edit(pipe)
    A.export_student(pipe, "student", tmp_path / "student")
    student = load_edit_pipeline(tmp_path / "student")
    student.set_progress_bar_config(disable=True)
    assert isinstance(student, KontextEditPipeline) and student.recommended_steps == 1
    assert not getattr(student.transformer, "peft_config", None)  # plain fused weights
    out = student(
        PROMPT,
        PHOTO,
        max_sequence_length=32,  # no steps given: the student's 1
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert _differ(out, adapted) <= 1e-5
