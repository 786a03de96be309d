"""IDE-Net and IPNet on FLUX.1 Kontext: the rectified-flow pieces against hand computations,
the adapters (which one is active, which one learns), the exports, CLI runs with exact resume."""

from __future__ import annotations

import json
import math

import dit_configs
import pytest
import torch
from PIL import Image
from test_idenet import SmallEmbedder

from instantportrait.backbones.flux_kontext import FluxKontextBackbone
from instantportrait.cli import main
from instantportrait.training.idenet import IDENetConfig
from instantportrait.training.ipnet import IPNetConfig
from instantportrait.training.kontext_idenet import KontextIDENetTrainer
from instantportrait.training.kontext_ipnet import KontextIPNetTrainer, flow_inversion
from instantportrait.training.kontext_model import flux_training_sigmas
from instantportrait.training.logger import read_metrics
from instantportrait.training.loop import step_generator
from launching import launch
from launching import settings as _settings

#: the batch of the in-process trainers (the teacher export uses 2)
BATCH = 4


class SmallKontextIDENet(KontextIDENetTrainer):
    def build_embedder(self):
        return SmallEmbedder().to(self.device)


def idenet_config(kontext_dir, pair_dir, out, **training) -> IDENetConfig:
    model = {"max_sequence_length": 32}
    training = {"batch_size": BATCH, **training}
    return dit_configs.idenet_config("kontext", kontext_dir, pair_dir, out, model, **training)


@pytest.fixture(scope="module")
def idenet(kontext_dir, pair_dir, tmp_path_factory):
    t = SmallKontextIDENet(idenet_config(kontext_dir, pair_dir, tmp_path_factory.mktemp("ide")))
    t.setup()
    return t


@pytest.fixture(scope="module")
def teacher_dir(kontext_dir, pair_dir, tmp_path_factory):
    """An IDE-Net export after two steps (its ``ide`` LoRA is no longer zero)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    t = SmallKontextIDENet(idenet_config(kontext_dir, pair_dir, out, max_steps=2, batch_size=2))
    return t.fit()


def ipnet_config(teacher_dir, pair_dir, out, **stage) -> IPNetConfig:
    stage = {"t_min": 100, "t_max": 400, **stage}
    return dit_configs.ipnet_config(teacher_dir, pair_dir, out, stage, batch_size=BATCH)


@pytest.fixture(scope="module")
def ipnet(teacher_dir, pair_dir, tmp_path_factory):
    t = KontextIPNetTrainer(ipnet_config(teacher_dir, pair_dir, tmp_path_factory.mktemp("ip")))
    t.setup()
    return t


def batch_of(trainer, n=4):
    if trainer.dataset.source[0].landmarks is None:
        pytest.skip("dlib not installed: the test dataset has no landmarks")
    return trainer.collate([trainer.dataset[(0, i)] for i in range(n)])


# ---------------------------------------------------------------- formulas by hand


def test_x0_from_velocity_by_hand_at_two_sigmas():
    # one row at sigma 0.25, one at 0.8 (per-row broadcasting is part of what is tested)
    x_sigma = torch.tensor([[2.0, -1.0], [0.5, 4.0]]).view(2, 1, 1, 2)
    v = torch.tensor([[1.0, 3.0], [-2.0, 0.5]]).view(2, 1, 1, 2)
    sigma = torch.tensor([0.25, 0.8])
    # x0 = x - sigma v: row 0: 2 - 0.25, -1 - 0.75; row 1: 0.5 + 1.6, 4 - 0.4
    expected = torch.tensor([[1.75, -1.75], [2.1, 3.6]]).view(2, 1, 1, 2)
    torch.testing.assert_close(FluxKontextBackbone.x0(x_sigma, sigma, v), expected)


def test_flow_inversion_is_euler_from_zero_to_sigma():
    x0 = torch.tensor([1.0, -2.0]).view(2, 1)
    sigma = torch.tensor([0.2, 0.1])
    # constant velocity c: exactly x0 + sigma c, whatever the step count
    out = flow_inversion(lambda x, s: torch.full_like(x, 3.0), x0, sigma, 4)
    torch.testing.assert_close(out, torch.tensor([1.6, -1.7]).view(2, 1))
    # v = x: four Euler steps multiply by (1 + sigma / 4) ** 4
    out = flow_inversion(lambda x, s: x, x0, sigma, 4)
    torch.testing.assert_close(out, torch.tensor([1.05**4, -2 * 1.025**4]).view(2, 1))
    # v = s (the level each step starts at): sum_k (sigma/4)(k sigma/4) = sigma^2 * 6/16
    out = flow_inversion(lambda x, s: s.view(-1, 1).expand_as(x), x0, sigma, 4)
    torch.testing.assert_close(out, x0 + (sigma**2 * 6 / 16).view(2, 1))


def test_training_sigmas_follow_flux_resolution_shift():
    cfg = {
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    }
    g = torch.Generator().manual_seed(0)
    for tokens, mu in ((256, 0.5), (4096, 1.15)):
        s = flux_training_sigmas(20000, tokens, cfg, g)
        assert s.min() > 0 and s.max() < 1
        # the logit-normal u has median 1/2, so sigma's median is e^mu / (e^mu + 1)
        assert s.median().item() == pytest.approx(math.exp(mu) / (math.exp(mu) + 1), abs=0.01)


# ---------------------------------------------------------------- IDE-Net


def test_wa_follows_each_rows_sigma_and_face_free_rows_skip(idenet, monkeypatch):
    batch = batch_of(idenet)
    batch["has_face"] = torch.tensor([True, False, True, True])
    seen, terms = {}, {}

    def record(module, args, kwargs):
        seen.setdefault("timestep", kwargs["timestep"].detach().clone())

    hook = idenet.dit_model.transformer.register_forward_pre_hook(record, with_kwargs=True)
    original = idenet.identity_term

    def spy(x_in, z0_hat, landmarks, t, **kw):
        out = original(x_in, z0_hat, landmarks, t, **kw)
        terms.update(n=x_in.shape[0], w_a=out["w_a"].detach())
        return out

    monkeypatch.setattr(idenet, "identity_term", spy)
    try:
        out = idenet.compute_loss(batch, step_generator(0, 3, 0, idenet.device))
    finally:
        hook.remove()
    sigma = seen["timestep"]  # what the transformer saw, per row
    assert terms["n"] == 3  # the face-free row is skipped
    # linear W_a with T_max = 1 is each face row's own sigma
    torch.testing.assert_close(terms["w_a"], sigma[[0, 2, 3]].float())
    assert len(set(sigma.tolist())) == 4 and torch.isfinite(out["loss"])


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(module, before):
    return {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}


def test_only_the_ide_adapter_learns_in_idenet(idenet):
    batch = batch_of(idenet)
    before = _snapshot(idenet.dit_model.transformer)
    idenet.training_step(batch, step_generator(0, 1, 0, idenet.device))
    changed = _changed(idenet.dit_model.transformer, before)
    assert changed and all(".ide." in n for n in changed)
    lora_b = {n for n in before if ".ide." in n and "lora_B" in n}
    assert lora_b <= changed  # every LoRA B received a gradient (A's are zero-grad at B = 0)


# ---------------------------------------------------------------- IPNet


def test_student_starts_as_ide_and_only_it_learns(ipnet):
    named = dict(ipnet.dit_model.transformer.named_parameters())
    ide = {n: p for n, p in named.items() if ".ide." in n}
    assert ide and any(float(p.abs().sum()) > 0 for n, p in ide.items() if "lora_B" in n)
    before = _snapshot(ipnet.dit_model.transformer)
    for n, p in ide.items():
        torch.testing.assert_close(named[n.replace(".ide.", ".student.")], p)
    ipnet.training_step(batch_of(ipnet), step_generator(0, 1, 0, ipnet.device))
    changed = _changed(ipnet.dit_model.transformer, before)
    assert changed and all(".student." in n for n in changed)


def test_teacher_never_runs_with_the_student_adapter(ipnet):
    calls = []

    def spy(module, args, kwargs):
        calls.append((list(module.active_adapters()), torch.is_grad_enabled()))

    hook = ipnet.dit_model.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        for seed in range(4):
            calls.clear()
            out = ipnet.compute_losses(batch_of(ipnet), step_generator(0, seed, 0, ipnet.device))
            if 0 < out["inversion_fraction"] < 1:
                break
    finally:
        hook.remove()
    student = [c for c in calls if c[1]]
    teacher = [c for c in calls if not c[1]]
    assert student == [(["student"], True)]  # one student call, with graph
    # the inversion's 4 Euler steps plus the target's call, each with only `ide` active
    assert len(teacher) == 4 + 1 and all(active == ["ide"] for active, _ in teacher)
    assert ipnet.dit_model.active_adapters() == ["student"]  # restored afterwards
    ipnet.optimizer.zero_grad(set_to_none=True)


def test_inversion_exactly_for_sigma_at_most_tau(ipnet, monkeypatch):
    calls = []

    def fake_teacher(z, sigma, image_latents, cond):
        calls.append((z.clone(), sigma.clone()))
        return 0.5 * z + sigma.view(-1, 1, 1, 1)

    monkeypatch.setattr(ipnet, "teacher_velocity", fake_teacher)
    z_hat = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    lat = torch.zeros(4, 16, 8, 8)
    cond = ipnet.backbone.encode_prompt(["a"] * 4, 32)
    for seed in range(30):  # draws on both sides of tau = 0.2
        calls.clear()
        out = ipnet.distillation_target(z_hat, lat, cond, None, torch.Generator().manual_seed(seed))
        small = out["t"] <= 0.2
        if small.any() and (~small).any():
            break
    assert small.any() and (~small).any()
    sigma = out["t"]
    assert ((sigma >= 0.1) & (sigma <= 0.4)).all()  # t in [100, 400] -> sigma = t / 1000
    # the 4 inversion calls: only the rows with sigma' <= tau, at s_k = k sigma' / 4
    assert len(calls) == 5
    x = z_hat[small]
    for k in range(4):
        z_k, s_k = calls[k]
        torch.testing.assert_close(s_k, sigma[small] * k / 4)
        torch.testing.assert_close(z_k, x)
        x = x + (sigma[small] / 4).view(-1, 1, 1, 1) * (0.5 * x + s_k.view(-1, 1, 1, 1))
    z_s, seen = calls[4]  # the target's call: the whole batch at z'
    torch.testing.assert_close(seen, sigma)
    torch.testing.assert_close(z_s[small], x)
    # the other rows: fresh standard-normal noise, (z' - (1 - s) z) / s
    s = sigma[~small].view(-1, 1, 1, 1)
    noise = (z_s[~small] - (1 - s) * z_hat[~small]) / s
    assert abs(noise.std().item() - 1.0) < 0.2 and abs(noise.mean().item()) < 0.2
    # x_phi = z' - sigma' v_phi(z')
    v = 0.5 * z_s + sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(out["latent"], z_s - sigma.view(-1, 1, 1, 1) * v)


def test_generator_and_discriminator_signs(ipnet, monkeypatch):
    disc = ipnet.accelerator.unwrap_model(ipnet.disc)
    scores = []
    original = type(disc).forward

    def spy(self, images, generator=None):
        out = original(self, images, generator=generator)
        scores.append(out.detach().clone())
        return out

    monkeypatch.setattr(type(disc), "forward", spy)
    logs = ipnet.training_step(batch_of(ipnet), step_generator(0, 7, 0, ipnet.device))
    fake_g, real, fake_d = scores  # G step on x_hat, then D on target and on detached x_hat
    assert logs["l_adv"] == pytest.approx(-fake_g.mean().item(), rel=1e-5)
    hinge = torch.relu(1 - real).mean() + torch.relu(1 + fake_d).mean()
    assert logs["loss_d"] == pytest.approx(hinge.item(), rel=1e-5)


# ---------------------------------------------------------------- export


def test_exports_load_as_lora_and_as_a_fused_one_step_editor(
    teacher_dir, pair_dir, tmp_path, kontext_dir, astronaut_path
):
    from diffusers import FluxKontextPipeline
    from PIL import Image

    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    t = KontextIPNetTrainer(ipnet_config(teacher_dir, pair_dir, tmp_path / "run"))
    final = t.fit()
    meta = json.loads((final / "instantportrait.json").read_text())
    assert meta["kind"] == "ipnet" and meta["stages"][-1]["tau"] == 0.2
    fused = KontextEditPipeline.from_pretrained(final)
    lora = FluxKontextPipeline.from_pretrained(kontext_dir)
    lora.load_lora_weights(str(final), weight_name="student_lora.safetensors")
    trained = dict(t.dit_model.transformer.named_parameters())
    assert any(".student." in n for n in trained)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=g)
    img = torch.randn(1, 16, 8, 8, generator=g)
    bb = fused.backbone
    cond = bb.encode_prompt(["as a sepia photograph"], 32)
    one = torch.ones(1)
    v_fused = bb.predict(x, one, cond, img)
    v_lora = FluxKontextBackbone(lora.transformer, *[None] * 5).predict(x, one, cond, img)
    with t.dit_model.adapter("student"):
        v_live = t.backbone.predict(x, one, cond, img)
    torch.testing.assert_close(v_fused, v_lora, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v_fused, v_live, atol=1e-5, rtol=1e-4)
    base = FluxKontextBackbone(
        FluxKontextPipeline.from_pretrained(kontext_dir).transformer, None, None, None, None, None
    ).predict(x, one, cond, img)
    assert not torch.allclose(v_fused, base, atol=1e-4)  # the student's LoRA is in there
    photo = Image.open(astronaut_path).convert("RGB").resize((64, 64))
    out = fused(
        "as a sepia photograph",
        photo,
        num_inference_steps=1,
        output_type="np",
        max_sequence_length=32,
    )
    assert out.images.shape == (1, 64, 64, 3)


# ---------------------------------------------------------------- the CLI


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


COMMON = _settings(
    data__resolution=64,
    data__detect_faces="false",
    training__batch_size=2,
    training__gradient_accumulation_steps=1,
    training__checkpoint_every=2,
    training__tensorboard="false",
    training__log_every=1,
    training__mixed_precision="no",
    training__gradient_checkpointing="false",
    training__ema="true",
    training__ema_decay=0.9,
    training__num_workers=0,
    training__validate_every=2,
    validation__count=2,
    validation__resolution=64,
    optim__warmup_steps=0,
    optim__lr="1e-3",
)


def _resume_matches(argv, tmp_path, capsys, keys, runs="run"):
    one, two = tmp_path / "one", tmp_path / "two"
    assert (
        run_cli([*argv, *_settings(training__output_dir=one, training__max_steps=4)], capsys)[0]
        == 0
    )
    code, out = run_cli(
        [*argv, *_settings(training__output_dir=two, training__max_steps=2)], capsys
    )
    assert code == 0, out.err
    code, out = run_cli(
        [*argv, *_settings(training__output_dir=two, training__max_steps=4), "--resume", "latest"],
        capsys,
    )
    assert code == 0, out.err
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [1, 2, 3, 4] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in keys:
            assert ra.get(key) == rb.get(key), (key, ra["step"])
    assert sorted(p.name for p in (one / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    # checkpoints hold the adapters, never the frozen base
    from safetensors.torch import load_file

    ckpt = one / "checkpoints" / "step-000004"
    keys = set(load_file(str(ckpt / "adapters.safetensors")))
    assert keys and all("lora_" in k for k in keys)
    for f in ckpt.glob("model*.safetensors"):
        assert not any("transformer_blocks" in k for k in load_file(str(f)))
    return one


def test_cli_idenet_then_ipnet_on_kontext_with_exact_resume(
    kontext_dir, pair_dir, tmp_path, capsys
):
    pytest.importorskip("dlib")
    ide = [
        "train",
        "idenet",
        *COMMON,
        *_settings(
            model__backbone="kontext",
            model__pretrained=kontext_dir,
            model__lora_rank=4,
            model__max_sequence_length=32,
            data__path=pair_dir,
            validation__steps=2,
        ),
    ]
    run = _resume_matches(ide, tmp_path / "ide", capsys, ("loss", "l_dm", "l_cid", "w_a"))
    assert (run / "validation" / "step-000004.png").is_file()
    assert any(r.get("l_cid", 0) > 0 for r in read_metrics(run))  # the identity term ran
    teacher = run / "final"
    assert (teacher / "ide_lora.safetensors").is_file()
    ip = [
        "train",
        "ipnet",
        "--teacher",
        teacher,
        "--stage",
        "low",
        *COMMON,
        *_settings(
            data__path=pair_dir,
            discriminator__backbone="tiny",
            triplet__dino="tiny",
        ),
    ]
    keys = ("loss_g", "l_adv", "l_distill", "l_triplet", "loss_d", "inversion_fraction")
    run = _resume_matches(ip, tmp_path / "ip", capsys, keys)
    assert (run / "validation" / "step-000002.png").is_file()
    assert all(r["inversion_fraction"] == 1.0 for r in read_metrics(run))  # low: sigma' <= tau
    # --stage all: high -> middle -> low, each from the previous student
    code, out = run_cli(
        [
            *ip[:4],
            "--stage",
            "all",
            *ip[6:],
            *_settings(training__output_dir=tmp_path / "all", training__max_steps=1),
        ],
        capsys,
    )
    assert code == 0, out.err
    meta = json.loads((tmp_path / "all" / "final" / "instantportrait.json").read_text())
    assert [s["stage"] for s in meta["stages"]] == ["high", "middle", "low"]
    assert [s["sigma_range"] for s in meta["stages"]] == [[0.4, 0.8], [0.2, 0.4], [0.15, 0.2]]
    # the exported student edits through `edit --model` in one step (its default)
    from instantportrait.records import read_records

    photo = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (120, 80, 60)).save(photo)
    code, out = run_cli(
        ["edit", photo, "--prompt", "make it a watercolor painting",
         "--model", tmp_path / "all" / "final", "-o", tmp_path / "edited"],
        capsys,
    )  # fmt: skip
    assert code == 0, out.err
    edited = read_records(tmp_path / "edited")
    assert len(edited) == 1 and (tmp_path / "edited" / next(iter(edited))).is_file()


def test_gradient_checkpointing_recomputes_the_student_not_the_teacher(ipnet):
    """Checkpointed blocks are recomputed in the backward, after the teacher's calls: the
    gradients must equal those without checkpointing (the student's adapter active again)."""
    t = ipnet.dit_model.transformer
    batch = batch_of(ipnet)

    def grads():
        ipnet.optimizer.zero_grad(set_to_none=True)
        out = ipnet.compute_losses(batch, step_generator(0, 2, 0, ipnet.device))
        out["loss_g"].backward()
        g = {n: p.grad.clone() for n, p in t.named_parameters() if p.grad is not None}
        ipnet.optimizer.zero_grad(set_to_none=True)
        return g

    plain = grads()
    t.enable_gradient_checkpointing()
    try:
        checkpointed = grads()
    finally:
        t.disable_gradient_checkpointing()
    assert plain.keys() == checkpointed.keys() and all(".student." in n for n in plain)
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], atol=1e-6, rtol=1e-4)


def test_fsdp_config_wraps_flux_blocks_and_paper_preset_resolves(kontext_dir, capsys):
    from pathlib import Path

    import diffusers.models.transformers.transformer_flux as flux
    from accelerate.commands.config.config_args import ClusterConfig

    root = Path(__file__).resolve().parents[2]
    cfg = ClusterConfig.from_yaml_file(str(root / "examples/accelerate/fsdp_kontext.yaml"))
    fsdp = cfg.fsdp_config
    assert cfg.distributed_type == "FSDP" and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_version"] == 2  # FSDP1 cannot flatten a block of bf16 base + fp32 LoRA
    for name in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert isinstance(getattr(flux, name), type)
    code, out = run_cli(
        [
            "train",
            "idenet",
            "--preset",
            "paper",
            *_settings(model__backbone="kontext", model__pretrained=kontext_dir, data__path="x"),
            "--dry-run",
        ],
        capsys,
    )
    assert code == 0, out.err
    resolved = json.loads(out.out)
    # a Kontext base as IPNet's teacher: one line naming the setting, before anything loads
    code, out = run_cli(
        ["train", "ipnet", "--teacher", kontext_dir, *_settings(data__path="x")], capsys
    )
    assert code == 2 and "not an IDE-Net export" in out.err and len(out.err.splitlines()) == 1
    assert resolved["model"]["backbone"] == "kontext" and resolved["model"]["lora_rank"] == 64
    assert resolved["data"]["size"] == [1024, 576]
    assert resolved["training"]["gradient_checkpointing"] is True


def test_ema_averages_the_student_adapter_only(ipnet):
    from instantportrait.training.ema import EMA

    ema = EMA(ipnet.accelerator.unwrap_model(ipnet.model))  # as the loop builds it
    student = [n for n, _ in ipnet.dit_model.transformer.named_parameters() if ".student." in n]
    assert sorted(ema.names) == sorted(student)


def test_export_holds_the_ema_weights_not_the_live_ones(kontext_dir, pair_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    t = SmallKontextIDENet(
        idenet_config(kontext_dir, pair_dir, out, max_steps=2, batch_size=2, ema=True)
    )
    t.run.ema_decay = 0.5  # far from the live weights after two steps at lr 1e-3
    final = t.fit()
    exported = load_file(str(final / "ide_lora.safetensors"))
    shadows = dict(zip(t.ema.names, t.ema.model.shadow_params))
    live = dict(t.dit_model.transformer.named_parameters())
    assert len(exported) == len(shadows) > 0
    moved = 0
    for name, shadow in shadows.items():
        key = "transformer." + name.replace(".ide.", ".")
        torch.testing.assert_close(exported[key], shadow.float())
        moved += not torch.allclose(exported[key], live[name].detach().float())
    assert moved > 0  # the live adapter differs: the export took the average


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_both_kontext_stages(kontext_dir, pair_dir, tmp_path):
    small = [*COMMON, *_settings(training__batch_size=1, training__max_steps=2)]
    ide = [
        "idenet",
        *small,
        *_settings(
            model__backbone="kontext",
            model__pretrained=kontext_dir,
            model__lora_rank=4,
            model__max_sequence_length=32,
            data__path=pair_dir,
            loss__lambda_aid=0.7,  # the identity term too (dlib on "cpu:0" loads)
            training__output_dir=tmp_path / "ide",
            training__validate_every=0,
        ),
    ]
    ip = [
        "ipnet",
        "--teacher",
        tmp_path / "ide" / "final",
        "--stage",
        "low",
        *small,
        *_settings(
            data__path=pair_dir,
            discriminator__backbone="tiny",
            triplet__dino="tiny",
            training__output_dir=tmp_path / "ip",
            training__validate_every=0,
        ),
    ]
    for args in (ide, ip):
        launch(["train", *args])
    assert [r["step"] for r in read_metrics(tmp_path / "ip")] == [1, 2]
    assert (tmp_path / "ip" / "final" / "student_lora.safetensors").is_file()
