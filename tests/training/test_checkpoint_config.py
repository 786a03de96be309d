"""Checkpoint state round trips (no pickle) and the typed config resolution."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from instantportrait.errors import InputError
from instantportrait.training.checkpoint import (
    join_state,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    split_state,
)
from instantportrait.training.config import apply_overrides, from_dict, load_config


def test_split_join_round_trip():
    state = {
        "a": torch.arange(3),
        "b": [1, 2.5, "x", None, (torch.ones(2), True)],
        7: {"nested": torch.zeros(1, 2)},
    }
    tensors, skeleton = split_state(state)
    json.dumps(skeleton)  # the non-tensor part is plain JSON
    back = join_state(tensors, json.loads(json.dumps(skeleton)))
    assert torch.equal(back["a"], state["a"]) and back["b"][:4] == [1, 2.5, "x", None]
    assert isinstance(back["b"][4], tuple) and torch.equal(back["b"][4][0], torch.ones(2))
    assert torch.equal(back[7]["nested"], torch.zeros(1, 2))


def test_optimizer_and_model_resume_exactly(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    x = torch.randn(8, 4)
    for _ in range(3):
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    save_checkpoint(
        tmp_path / "run" / "checkpoints" / "step-000003",
        modules={"model": model},
        optimizers={"model": opt},
        schedulers={"model": sched},
        ema=None,
        state={"step": 3},
    )
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    state, ema = load_checkpoint(
        resolve_resume(tmp_path / "run", "latest"),
        modules={"model": model2},
        optimizers={"model": opt2},
        schedulers={"model": sched2},
    )
    assert state["step"] == 3 and ema is None
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
        m(x).pow(2).mean().backward()
        o.step()
        s.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "step-000003").iterdir())
    assert all(f.endswith((".safetensors", ".json")) for f in files)  # nothing pickled


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
