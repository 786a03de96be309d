"""Checkpoint state round trips (no pickle) and the typed config resolution."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from instantportrait.errors import InputError
from instantportrait.training.checkpoint import (
    Progress,
    list_checkpoints,
    load_training_state,
    prune_checkpoints,
    resolve_resume,
    save_training_state,
)
from instantportrait.training.config import apply_overrides, from_dict, load_config
from instantportrait.training.ema import EMA
from instantportrait.training.run_settings import RunConfig, build_accelerator


def _setup(seed: int):
    torch.manual_seed(seed)
    acc = build_accelerator(RunConfig(output_dir="unused"))
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model, opt, sched = acc.prepare(model, opt, sched)
    progress, ema = Progress(), EMA(model, 0.9, power=1.0)
    acc.register_for_checkpointing(progress, ema)
    return acc, model, opt, sched, progress, ema


def _step(model, opt, sched, ema, x):
    model(x).pow(2).mean().backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    ema.update(model)


def test_accelerate_state_resumes_model_optimizer_ema_and_progress_exactly(tmp_path, monkeypatch):
    """Through accelerate's save_state/load_state: the path FSDP and DeepSpeed states take."""
    acc, model, opt, sched, progress, ema = _setup(0)
    calls = []
    original_save = acc.save_state
    monkeypatch.setattr(
        acc, "save_state", lambda d, **kw: (calls.append(("save", kw)), original_save(d, **kw))[1]
    )
    x = torch.randn(8, 4)
    for _ in range(3):
        _step(model, opt, sched, ema, x)
    progress.step, progress.epoch, progress.position = 3, 1, 2
    folder = save_training_state(
        acc, tmp_path / "run" / "checkpoints" / "step-000003", progress, {}
    )
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    assert calls == [("save", {"safe_serialization": True})]
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and "state.json" in names  # weights: safetensors
    acc2, model2, opt2, sched2, progress2, ema2 = _setup(1)  # other weights to start with
    state = load_training_state(acc2, resolve_resume(tmp_path / "run", "latest"))
    assert state["step"] == 3 and (progress2.step, progress2.epoch, progress2.position) == (3, 1, 2)
    for m, o, s, e in ((model, opt, sched, ema), (model2, opt2, sched2, ema2)):
        _step(m, o, s, e, x)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(ema.model.shadow_params, ema2.model.shadow_params):
        assert torch.equal(a, b)


def test_progress_refuses_another_number_of_processes():
    with pytest.raises(InputError, match="written by 2 processes"):
        Progress(world_size=1).load_state_dict(
            {"step": 1, "micro_step": 1, "epoch": 0, "position": 1, "world_size": 2}
        )


def test_ema_warms_up_and_tracks_training():
    """EMA with warm-up (diffusers' EMAModel): d_k = min(decay, 1 - (1 + k - 1) ** -power)."""
    w = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.Module()
    module.w = w
    ema = EMA(module, decay=0.9999, power=0.75)
    shadow, plain = 0.0, 0.0
    for k in range(1, 201):
        with torch.no_grad():
            w.fill_(k / 200)  # training moves the weight from 0 to 1
        ema.update(module)
        d = 0.0 if k == 1 else min(0.9999, 1 - k**-0.75)  # by hand
        shadow = d * shadow + (1 - d) * k / 200
        plain = 0.9999 * plain + 0.0001 * k / 200  # no warm-up, from the pretrained 0
    out = torch.nn.Module()
    out.w = torch.nn.Parameter(torch.zeros(1))
    ema.copy_to(out)
    assert abs(out.w.item() - shadow) < 1e-5
    assert out.w.item() > 0.6 and plain < 0.02  # the export tracks training


def test_prune_and_resume_resolution(tmp_path):
    for step in (1, 2, 3, 4):
        folder = tmp_path / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}")
    (tmp_path / "checkpoints" / "step-000009").mkdir()  # incomplete: no state.json
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    assert resolve_resume(tmp_path, "latest").name == "step-000004"
    assert resolve_resume(tmp_path / "empty", "latest") is None
    with pytest.raises(InputError, match="not a checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "nowhere"))


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    flag: bool = False


def test_config_resolution_and_errors(tmp_path):
    cfg = load_config(
        Outer,
        None,
        ["inner.lr=5e-5", "inner.steps=3", 'tags=["a"]', "flag=true", "inner.name=run one"],
    )
    assert (cfg.inner.lr, cfg.inner.steps, cfg.tags, cfg.flag, cfg.inner.name) == (
        5e-5,
        3,
        ["a"],
        True,
        "run one",
    )
    (tmp_path / "c.toml").write_text("[inner]\nsteps = 7\n")
    assert load_config(Outer, tmp_path / "c.toml").inner.steps == 7
    for override, message in [
        ("inner.stepz=3", "inner.stepz: unknown setting"),
        ("inner.steps=2.5", "inner.steps: expected an integer"),
        ("flag=yes", "flag: expected true or false"),
        ("novalue", "expected KEY=VALUE"),
    ]:
        with pytest.raises(InputError, match=message):
            load_config(Outer, None, [override])
    with pytest.raises(InputError, match="not a valid config file"):
        (tmp_path / "bad.json").write_text("{")
        load_config(Outer, tmp_path / "bad.json")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    assert from_dict(Outer, {}).inner.lr == 1e-3
