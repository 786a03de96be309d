"""IDE-Net and IPNet on Qwen-Image-Edit: the LoRA targets counted from the transformer's own
module names, the scheduler's shift, the condition's drops, which adapter learns and which
one the (true-CFG) teacher runs with, the exports against diffusers' LoRA fusing, and the CLI
from a tiny folder to a one-step ``edit --model`` with exact resume."""

from __future__ import annotations

import json
import math

import dit_configs
import numpy as np
import pytest
import torch
from test_idenet import SmallEmbedder

from instantportrait.cli import main
from instantportrait.training.dit_idenet import DiTIDENetTrainer
from instantportrait.training.dit_ipnet import DiTIPNetTrainer
from instantportrait.training.dit_model import flow_training_sigmas
from instantportrait.training.idenet import IDENetConfig
from instantportrait.training.ipnet import IPNetConfig
from instantportrait.training.logger import read_metrics
from instantportrait.training.loop import step_generator
from launching import settings as _settings

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")
ATTENTION = (*ATTENTION, "to_add_out")
MLP = ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")


class SmallQwenIDENet(DiTIDENetTrainer):
    def build_embedder(self):
        return SmallEmbedder().to(self.device)


def idenet_config(qwen_dir, pair_dir, out, **training) -> IDENetConfig:
    training = {"batch_size": 2, **training}
    return dit_configs.idenet_config("qwen-edit", qwen_dir, pair_dir, out, {}, **training)


@pytest.fixture(scope="module")
def idenet(qwen_dir, pair_dir, tmp_path_factory):
    t = SmallQwenIDENet(idenet_config(qwen_dir, pair_dir, tmp_path_factory.mktemp("qide")))
    t.setup()
    return t


@pytest.fixture(scope="module")
def teacher_dir(qwen_dir, pair_dir, tmp_path_factory):
    """A Qwen IDE-Net export after two steps (its ``ide`` LoRA is no longer zero)."""
    out = tmp_path_factory.mktemp("qteacher") / "run"
    return SmallQwenIDENet(idenet_config(qwen_dir, pair_dir, out, max_steps=2)).fit()


def ipnet_config(teacher_dir, pair_dir, out) -> IPNetConfig:
    # the low stage's range: every sigma' <= tau, so every row is inverted
    stage = {"t_min": 150, "t_max": 200}
    return dit_configs.ipnet_config(teacher_dir, pair_dir, out, stage, batch_size=2)


@pytest.fixture(scope="module")
def ipnet(teacher_dir, pair_dir, tmp_path_factory):
    t = DiTIPNetTrainer(ipnet_config(teacher_dir, pair_dir, tmp_path_factory.mktemp("qip")))
    t.setup()
    return t


def batch_of(trainer, n=2):
    if trainer.dataset.source[0].landmarks is None:
        pytest.skip("dlib not installed: the test dataset has no landmarks")
    return trainer.collate([trainer.dataset[(0, i)] for i in range(n)])


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(module, before):
    return {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}


# ---------------------------------------------------------------- IDE-Net


def test_lora_targets_are_each_blocks_attention_and_mlp_linears(idenet, qwen_dir):
    from diffusers import QwenImageTransformer2DModel

    from instantportrait.training.qwen_edit_model import qwen_lora_targets

    base = QwenImageTransformer2DModel.from_pretrained(qwen_dir, subfolder="transformer")
    modules = dict(base.named_modules())
    blocks = {n.split(".")[1] for n in modules if n.startswith("transformer_blocks.")}
    expected = {f"transformer_blocks.{b}.attn.{a}" for b in blocks for a in ATTENTION}
    expected |= {f"transformer_blocks.{b}.{m}" for b in blocks for m in MLP}
    assert len(expected) == 12 * len(blocks) and all(
        isinstance(modules[n], torch.nn.Linear) for n in expected
    )
    # the last block's text-output path never reaches the output: left out
    last = max(blocks, key=int)
    dead = {f"transformer_blocks.{last}.{m}" for m in ("attn.add_q_proj", "attn.to_add_out")}
    dead |= {f"transformer_blocks.{last}.{m}" for m in MLP if m.startswith("txt_mlp")}
    adapted = {
        n
        for n, m in idenet.dit_model.transformer.named_modules()
        if "ide" in getattr(m, "lora_A", {})
    }
    assert adapted == expected - dead and len(dead) == 4
    # the linears left frozen exist (modulation, input/output layers): the regex skips them
    frozen = {n for n, m in modules.items() if isinstance(m, torch.nn.Linear)} - expected
    assert {"img_in", "txt_in", "proj_out"} <= frozen
    assert any(n.endswith("img_mod.1") for n in frozen)
    # with 3 blocks, blocks 0 and 1 keep their whole text path (block 10's id is not "1.")
    import re

    pattern = qwen_lora_targets(3)
    for block, full in (("0", True), ("1", True), ("2", False)):
        name = f"transformer_blocks.{block}.txt_mlp.net.2"
        assert bool(re.fullmatch(pattern, name)) is full
    assert re.fullmatch(qwen_lora_targets(2), "transformer_blocks.10.attn.to_add_out")
    assert re.fullmatch(qwen_lora_targets(2), "transformer_blocks.1.attn.add_k_proj")


def test_training_sigmas_follow_the_qwen_schedulers_exponential_shift(idenet):
    cfg = idenet.scheduler.config
    assert cfg.time_shift_type == "exponential" and cfg.use_dynamic_shifting
    g = torch.Generator().manual_seed(0)
    # mu: 0.5 at 256 tokens (32 x 32 latents), 0.9 at 8192 tokens (128 x 256 latents)
    for hw, mu in (((32, 32), 0.5), ((128, 256), 0.9)):
        s = idenet.dit_model.training_sigmas(20000, hw, g)
        assert s.min() > 0 and s.max() < 1
        # the logit-normal u has median 1/2: sigma's median is e^mu / (e^mu + 1)
        assert s.median().item() == pytest.approx(math.exp(mu) / (math.exp(mu) + 1), abs=0.01)
    # a linear time shift: sigma = mu / (mu + 1/u - 1), median mu / (mu + 1)
    linear = {**dict(cfg), "time_shift_type": "linear"}
    s = flow_training_sigmas(20000, 8192, linear, g)
    assert s.median().item() == pytest.approx(0.9 / 1.9, abs=0.01)


def test_dropped_text_is_the_empty_prompt_with_the_image_and_a_dropped_image_is_grey(
    idenet, monkeypatch
):
    batch = batch_of(idenet)
    batch["instruction"] = ["", "with inverted colours"]
    batch["drop_image"] = torch.tensor([False, True])
    seen = {}
    original = idenet.backbone.encode_prompt

    def spy(prompts, images, negative_prompts=None):
        seen.update(prompts=prompts, images=images, negatives=negative_prompts)
        return original(prompts, images, negative_prompts)

    monkeypatch.setattr(idenet.backbone, "encode_prompt", spy)
    _, _, latents, cond = idenet.encode_pair(batch, 32)
    assert seen["prompts"] == ["", "with inverted colours"] and seen["negatives"] is None
    kept = ((batch["input"][0] + 1) * 127.5).round().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(seen["images"][0]), kept.astype(np.uint8))
    assert (np.asarray(seen["images"][1]) == 128).all()  # 0 in [-1, 1]: mid-grey
    assert latents[1].abs().max() == 0 and latents[0].abs().max() > 0
    assert cond.negative is None  # the flow-matching loss runs one unguided call


def test_only_the_ide_adapter_learns_in_idenet(idenet):
    before = _snapshot(idenet.dit_model.transformer)
    idenet.training_step(batch_of(idenet), step_generator(0, 1, 0, idenet.device))
    changed = _changed(idenet.dit_model.transformer, before)
    assert changed and all(".ide." in n for n in changed)
    lora_b = {n for n in before if ".ide." in n and "lora_B" in n}
    assert lora_b <= changed  # every LoRA B got a gradient (no adapter on a dead path)


# ---------------------------------------------------------------- IPNet


def test_student_starts_as_ide_and_only_it_learns(ipnet):
    named = dict(ipnet.dit_model.transformer.named_parameters())
    ide = {n: p for n, p in named.items() if ".ide." in n}
    assert any(float(p.abs().sum()) > 0 for n, p in ide.items() if "lora_B" in n)
    for n, p in ide.items():
        torch.testing.assert_close(named[n.replace(".ide.", ".student.")], p)
    before = _snapshot(ipnet.dit_model.transformer)
    ipnet.training_step(batch_of(ipnet), step_generator(0, 1, 0, ipnet.device))
    changed = _changed(ipnet.dit_model.transformer, before)
    assert changed and all(".student." in n for n in changed)


def test_teacher_runs_ide_only_guided_target_unguided_inversion(ipnet):
    calls = []

    def spy(module, args, kwargs):
        text = kwargs["encoder_hidden_states"]
        calls.append((list(module.active_adapters()), torch.is_grad_enabled(), text.clone()))

    hook = ipnet.dit_model.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        out = ipnet.compute_losses(batch_of(ipnet), step_generator(0, 3, 0, ipnet.device))
    finally:
        hook.remove()
    assert out["inversion_fraction"] == 1.0
    student = [c for c in calls if c[1]]
    teacher = [c for c in calls if not c[1]]
    assert [c[0] for c in student] == [["student"]]  # ONE student call, with graph
    # 4 unguided inversion steps, then the target's true CFG: prompt and negative prompt
    assert len(teacher) == 4 + 2 and all(active == ["ide"] for active, _, _ in teacher)
    prompt = student[0][2]
    for _, _, text in teacher[:5]:
        torch.testing.assert_close(text, prompt)  # the instruction's condition
    assert teacher[5][2].shape != prompt.shape or not torch.equal(teacher[5][2], prompt)
    assert ipnet.dit_model.active_adapters() == ["student"]
    ipnet.optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- export


def test_fused_student_equals_diffusers_lora_fusing_and_edits_in_one_step(
    teacher_dir, pair_dir, tmp_path, qwen_dir, astronaut_path
):
    from PIL import Image

    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    teacher = QwenEditPipeline.from_pretrained(teacher_dir)
    assert teacher.config.recommended_steps == 50 and teacher.config.default_guidance_scale == 4.0
    t = DiTIPNetTrainer(ipnet_config(teacher_dir, pair_dir, tmp_path / "run"))
    final = t.fit()
    meta = json.loads((final / "instantportrait.json").read_text())
    assert meta["backbone"] == "qwen-edit" and meta["kind"] == "ipnet"
    fused = QwenEditPipeline.from_pretrained(final)
    assert fused.config.recommended_steps == 1 and fused.config.default_guidance_scale == 1.0
    # diffusers' own path: the base, the exported LoRA file loaded and fused
    ref = QwenEditPipeline.from_pretrained(qwen_dir)
    ref.load_lora_weights(str(final), weight_name="student_lora.safetensors")
    bb = ref.backbone
    g = torch.Generator().manual_seed(0)
    x, img = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)
    photo = Image.open(astronaut_path).convert("RGB").resize((64, 64))
    cond = bb.encode_prompt(["as a sepia photograph"], [photo])
    one = torch.ones(1)
    v_lora = bb.predict(x, one, cond, img)
    ref.fuse_lora()
    ref.unload_lora_weights()
    mine = dict(fused.transformer.named_parameters())
    theirs = dict(ref.transformer.named_parameters())
    assert mine.keys() == theirs.keys()
    merged = 0
    base = dict(QwenEditPipeline.from_pretrained(qwen_dir).transformer.named_parameters())
    for name, p in mine.items():
        torch.testing.assert_close(p, theirs[name], atol=1e-5, rtol=0)
        merged += not torch.equal(p, base[name])
    assert merged > 0  # the student's LoRA is in there
    v_fused = fused.backbone.predict(x, one, cond, img)
    with t.dit_model.adapter("student"):
        v_live = t.backbone.predict(x, one, cond, img)
    torch.testing.assert_close(v_fused, v_lora, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v_fused, v_live, atol=1e-5, rtol=1e-4)
    out = fused("as a sepia photograph", photo, output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and fused._num_timesteps == 1


# ---------------------------------------------------------------- the CLI


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


COMMON = _settings(
    data__resolution=64,
    data__detect_faces="false",
    training__batch_size=2,
    training__gradient_accumulation_steps=1,  # the stage presets accumulate to their batch
    training__checkpoint_every=1,
    training__tensorboard="false",
    training__log_every=1,
    training__mixed_precision="no",
    training__ema="true",
    training__ema_decay=0.9,
    training__num_workers=0,
    training__validate_every=2,
    validation__count=1,
    validation__resolution=64,
    optim__warmup_steps=0,
    optim__lr="1e-3",
)


def test_cli_idenet_resumes_exactly_then_ipnet_all_stages_then_one_step_edit(
    qwen_dir, pair_dir, tmp_path, capsys
):
    pytest.importorskip("dlib")
    from safetensors.torch import load_file

    from instantportrait.records import read_records

    ide = [
        "train",
        "idenet",
        *COMMON,
        *_settings(
            model__backbone="qwen-edit",
            model__pretrained=qwen_dir,
            model__lora_rank=4,
            data__path=pair_dir,
            validation__steps=2,
        ),
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    for out, steps, extra in ((one, 2, []), (two, 1, []), (two, 2, ["--resume", "latest"])):
        argv = [*ide, *_settings(training__output_dir=out, training__max_steps=steps), *extra]
        code, captured = run_cli(argv, capsys)
        assert code == 0, captured.err
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [1, 2] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "l_dm", "l_cid", "w_a", "sigma"):
            assert ra.get(key) == rb.get(key), (key, ra["step"])
    assert any(r.get("l_cid", 0) > 0 for r in a)  # the identity term ran
    assert (one / "validation" / "step-000002.png").is_file()
    # the checkpoint holds the adapters, never the frozen base
    ckpt = one / "checkpoints" / "step-000002"
    keys = set(load_file(str(ckpt / "adapters.safetensors")))
    assert keys and all("lora_" in k and ".ide." in k for k in keys)
    teacher = one / "final"
    code, captured = run_cli(
        ["train", "ipnet", "--teacher", teacher, "--stage", "all", *COMMON,
         *_settings(data__path=pair_dir, discriminator__backbone="tiny", triplet__dino="tiny",
                    training__output_dir=tmp_path / "all", training__max_steps=1,
                    training__validate_every=0)],
        capsys,
    )  # fmt: skip
    assert code == 0, captured.err
    final = tmp_path / "all" / "final"
    meta = json.loads((final / "instantportrait.json").read_text())
    assert [s["stage"] for s in meta["stages"]] == ["high", "middle", "low"]
    code, captured = run_cli(
        ["edit", pair_dir / "inputs" / "000.png", "--prompt", "as a sepia photograph",
         "--model", final, "--resolution", 64, "-o", tmp_path / "edited"],
        capsys,
    )  # fmt: skip
    assert code == 0, captured.err
    edited = read_records(tmp_path / "edited")
    assert len(edited) == 1 and (tmp_path / "edited" / next(iter(edited))).is_file()
    # a Qwen-Image-Edit base as IPNet's teacher: one line naming the setting
    code, captured = run_cli(
        ["train", "ipnet", "--teacher", qwen_dir, *_settings(data__path="x")], capsys
    )
    assert code == 2 and "not an IDE-Net export" in captured.err
    assert "model.backbone=qwen-edit" in captured.err and len(captured.err.splitlines()) == 1


def test_fsdp_config_wraps_qwen_blocks_and_paper_preset_resolves(qwen_dir, capsys):
    from pathlib import Path

    import diffusers.models.transformers.transformer_qwenimage as qwen
    from accelerate.commands.config.config_args import ClusterConfig

    root = Path(__file__).resolve().parents[2]
    cfg = ClusterConfig.from_yaml_file(str(root / "examples/accelerate/fsdp_qwen_edit.yaml"))
    fsdp = cfg.fsdp_config
    assert cfg.distributed_type == "FSDP" and fsdp["fsdp_version"] == 2
    for name in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert isinstance(getattr(qwen, name), type)
    code, out = run_cli(
        ["train", "idenet", "--preset", "paper", "--dry-run",
         *_settings(model__backbone="qwen-edit", model__pretrained=qwen_dir, data__path="x")],
        capsys,
    )  # fmt: skip
    assert code == 0, out.err
    resolved = json.loads(out.out)
    assert resolved["model"]["backbone"] == "qwen-edit" and resolved["model"]["lora_rank"] == 64
    assert resolved["model"]["guidance"] is None  # the family's: true CFG 4.0
    assert resolved["data"]["size"] == [1024, 576]


def test_a_2509_folder_trains_with_its_condition_image_and_exports_its_editor(
    qwen_plus_dir, pair_dir, tmp_path, monkeypatch
):
    from instantportrait.backbones.qwen_edit import QwenEditBackbone
    from instantportrait.pipelines.qwen_edit import QwenEditPipeline

    sizes = []
    original = QwenEditBackbone.encode_prompt

    def spy(self, prompts, images, negative_prompts=None):
        sizes.extend(im.size for im in images)
        return original(self, prompts, images, negative_prompts)

    monkeypatch.setattr(QwenEditBackbone, "encode_prompt", spy)
    t = SmallQwenIDENet(idenet_config(qwen_plus_dir, pair_dir, tmp_path / "run"))
    final = t.fit()
    assert t.dit_model.plus and t.backbone.plus
    # the 64 x 64 training images reach the VL encoder at about 384 x 384 (2509's condition
    # image: sqrt(384 * 384) = 384, a multiple of 32), the VAE at 64 x 64
    assert sizes and set(sizes) == {(384, 384)}
    pipe = QwenEditPipeline.from_pretrained(final)
    assert pipe.config.plus and pipe.config.recommended_steps == 40
    assert pipe.config.default_guidance_scale == 4.0


def test_the_memory_plan_counts_the_trainers_lora(idenet):
    """The plan's adapter rows come from the trainers' own targets: its meta count at the tiny
    config and rank 4 is the trained model's ``ide`` parameter count."""
    import sys
    from pathlib import Path

    from instantportrait.backbones.qwen_edit_components import TINY_TRANSFORMER_CONFIG

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from qwen_edit_memory_plan import meta_transformer

    t = meta_transformer(4, TINY_TRANSFORMER_CONFIG)
    planned = sum(p.numel() for n, p in t.named_parameters() if "lora_" in n)
    trained = sum(
        p.numel() for n, p in idenet.dit_model.transformer.named_parameters() if ".ide." in n
    )
    assert planned == trained > 0


@pytest.mark.multiprocess
def test_fsdp2_qwen_idenet_equals_ddp(qwen_dir, pair_dir, tmp_path):
    """The shared sharding code on Qwen's blocks (``fsdp_qwen_edit.yaml``): the same losses and
    export as DDP, the sharded checkpoint holding the adapter only."""
    from safetensors.torch import load_file
    from test_kontext_fsdp import RUN as FSDP_RUN
    from test_kontext_fsdp import _checkpointed, _config, _launch, _losses, _same_files

    fsdp_cfg = _config(tmp_path, True, "fsdp_qwen_edit.yaml")
    ddp_cfg = _config(tmp_path, False)

    def args(out):
        return ["idenet", *FSDP_RUN, *_settings(
            model__backbone="qwen-edit", model__pretrained=qwen_dir, model__lora_rank=4,
            data__path=pair_dir, loss__lambda_aid=0.7, training__output_dir=out)]  # fmt: skip

    _launch(fsdp_cfg, True, args(tmp_path / "fsdp"))
    _launch(ddp_cfg, False, args(tmp_path / "ddp"))
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step-000001"
    ddp_file = tmp_path / "ddp" / "checkpoints" / "step-000001" / "adapters.safetensors"
    lora = {f"model.{k}" for k in load_file(str(ddp_file))}
    assert lora and _checkpointed(ckpt / "pytorch_model_fsdp_0") == lora
    losses = _losses(tmp_path / "fsdp")
    torch.testing.assert_close(losses, _losses(tmp_path / "ddp"), rtol=1e-5, atol=1e-7)
    _same_files(tmp_path / "fsdp" / "final", tmp_path / "ddp" / "final", exact=False)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_qwen_ipnet_equals_ddp(teacher_dir, pair_dir, tmp_path):
    """IPNet on Qwen's shards: the true-CFG teacher (two calls) and the unguided inversion with
    ``ide`` switched on the shards give DDP's losses and student."""
    from safetensors.torch import load_file
    from test_kontext_fsdp import RUN as FSDP_RUN
    from test_kontext_fsdp import _config, _launch

    fsdp_cfg = _config(tmp_path, True, "fsdp_qwen_edit.yaml")
    ddp_cfg = _config(tmp_path, False)

    def args(out):
        return ["ipnet", "--teacher", teacher_dir, "--stage", "low", *FSDP_RUN, *_settings(
            data__path=pair_dir, discriminator__backbone="tiny", triplet__dino="tiny",
            training__gradient_accumulation_steps=1, training__output_dir=out)]  # fmt: skip

    _launch(fsdp_cfg, True, args(tmp_path / "fsdp"))
    _launch(ddp_cfg, False, args(tmp_path / "ddp"))
    keys = ("loss_g", "l_adv", "l_distill", "loss_d")
    got = [[r[k] for k in keys] for r in read_metrics(tmp_path / "fsdp")]
    want = [[r[k] for k in keys] for r in read_metrics(tmp_path / "ddp")]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    name = "student_lora.safetensors"
    x = load_file(str(tmp_path / "fsdp" / "final" / name))
    y = load_file(str(tmp_path / "ddp" / "final" / name))
    assert x.keys() == y.keys() and x
    for k in x:
        torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=1e-5)
