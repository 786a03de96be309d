"""The runner and its store: resume after a kill (between items and inside one), no duplicate
rows, unavailable metrics reported while the rest run, FFC counting, SPEC parsing, protocols."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from instantportrait.errors import InputError
from instantportrait.evaluation import metrics as M
from instantportrait.evaluation.methods import (
    METHOD_MODULES,
    Method,
    MethodSpec,
    build_method,
    method_class,
    parse_method_arg,
    parse_method_spec,
    register_method,
)
from instantportrait.evaluation.protocols import (
    Prompt,
    list_protocols,
    load_protocol,
    read_prompts,
)
from instantportrait.evaluation.runner import EvaluationConfig, Evaluator
from instantportrait.evaluation.store import ResultStore


class CountingMethod(Method):
    """Small deterministic random outputs; counts its calls."""

    kind = "counting"
    options = ("tag",)

    def __init__(self, tag: int = 0) -> None:
        super().__init__(MethodSpec("counting", options={"tag": tag}, text=f"counting,tag={tag}"))
        self.calls = 0

    def generate(self, image, prompt, seed, **context):
        self.calls += 1
        g = torch.Generator().manual_seed(1000 * seed + context["prompt_index"])
        arr = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        return Image.fromarray(arr)

    def cost(self):
        return {"params": 1234, "steps": 2}


@pytest.fixture
def mean_metric(monkeypatch):
    """A cheap item metric registered for the test only; ``calls`` counts its evaluations."""
    calls: list[int] = []
    state = {"interrupt_at": None}

    def fn(ctx):
        calls.append(1)
        if state["interrupt_at"] is not None and len(calls) == state["interrupt_at"]:
            raise KeyboardInterrupt
        return float(ctx.tensor("output").mean())

    metric = M.Metric("test_mean", "Mean pixel", "item", fn, family="test", paper="a test")
    monkeypatch.setitem(M.METRICS, "test_mean", metric)
    return calls, state


@pytest.fixture
def small_faces(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        p = folder / name
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


PROMPTS = [
    Prompt("wearing a hat", "all", 0),
    Prompt("as a statue", "all", 1),
    Prompt("old", "all", 2),
]


def _config(faces, out, methods, metrics=("test_mean", "params", "steps"), **kw):
    return EvaluationConfig(
        faces=faces,
        prompts=PROMPTS,
        methods=methods,
        metrics=list(metrics),
        seeds=[0, 1],
        out=out,
        progress=False,
        **kw,
    )


def _distinct_keys(path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        total = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        distinct = conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT method, subject, subject_fp, prompt, seed, "
            "metric, metric_key FROM results)"
        ).fetchone()[0]
    return total, distinct


def test_resume_after_a_kill_computes_exactly_the_rest(tmp_path, small_faces, mean_metric):
    calls, _ = mean_metric
    out = tmp_path / "run"
    total = 2 * 2 * 3 * 2  # methods x faces x prompts x seeds
    first = {"m1": CountingMethod(1), "m2": CountingMethod(2)}

    def kill_after(k):
        def cb(count, item):
            if count == k:
                raise RuntimeError("killed")

        return cb

    with pytest.raises(RuntimeError, match="killed"):
        Evaluator(_config(small_faces, out, first)).run(on_item=kill_after(5))
    assert sum(m.calls for m in first.values()) == 5
    assert len(calls) == 5
    with ResultStore(out) as store:
        assert store.count() == 5
        assert len(store.outputs()) == 5

    second = {"m1": CountingMethod(1), "m2": CountingMethod(2)}
    summary = Evaluator(_config(small_faces, out, second)).run()
    assert summary.already_done == 5 and summary.processed == total - 5
    assert sum(m.calls for m in second.values()) == total - 5
    assert len(calls) == total  # each item scored once over both runs
    n, distinct = _distinct_keys(out / "results.sqlite")
    assert n == distinct == total + 2 * 2  # item rows + params/steps per method
    assert len(list((out / "outputs").rglob("*.png"))) == total

    third = {"m1": CountingMethod(1), "m2": CountingMethod(2)}
    summary = Evaluator(_config(small_faces, out, third)).run()
    assert summary.processed == 0 and sum(m.calls for m in third.values()) == 0
    assert _distinct_keys(out / "results.sqlite") == (n, n)


def test_a_kill_inside_an_item_reuses_its_saved_output(tmp_path, small_faces, mean_metric):
    calls, state = mean_metric
    out = tmp_path / "run"
    total = 2 * 3 * 2
    state["interrupt_at"] = 3  # dies while scoring the 3rd item, after saving its output
    first = CountingMethod()
    with pytest.raises(KeyboardInterrupt):
        Evaluator(_config(small_faces, out, {"m": first})).run()
    with ResultStore(out) as store:
        assert store.count() == 2 and len(store.outputs()) == 3
    state["interrupt_at"] = None
    second = CountingMethod()
    summary = Evaluator(_config(small_faces, out, {"m": second})).run()
    assert second.calls == total - 3  # the 3rd output is read back, not regenerated
    assert summary.reused_outputs == 1
    assert _distinct_keys(out / "results.sqlite") == (total + 2, total + 2)


def test_unavailable_metrics_are_reported_and_the_rest_run(tmp_path, small_faces, mean_metric):
    out = tmp_path / "run"
    cfg = _config(
        small_faces,
        out,
        {"m": CountingMethod()},
        metrics=("test_mean", "clip_t_vith14", "hps_v2", "steps"),
        weights={"clip-vit-h-14": str(tmp_path / "no-such-clip")},
    )
    summary = Evaluator(cfg).run()
    assert set(summary.unavailable) == {"clip_t_vith14", "hps_v2"}
    assert "no-such-clip" in summary.unavailable["clip_t_vith14"]
    assert "provide" in summary.unavailable["clip_t_vith14"]
    assert "--weights hps-v2=" in summary.unavailable["hps_v2"]
    with ResultStore(out) as store:
        rows = store.rows()
        assert {r.metric for r in rows} == {"test_mean", "steps"}
        assert all(r.status == "ok" for r in rows)
        assert store.metric_status()["hps_v2"][0] == "unavailable"
    md = (out / "report.md").read_text()
    assert "## Unavailable metrics" in md and "no-such-clip" in md
    assert "| m | " in md and "unavailable" in md
    import csv

    row = next(csv.DictReader((out / "report.csv").open()))
    assert row["clip_t_vith14_status"] == "unavailable"
    assert row["test_mean_status"] == "ok"
    assert row["test_mean_n"] == str(2 * 3 * 2)
    with pytest.raises(InputError, match="unknown model key"):
        M.ModelHub({"clip-vit-zz": "x"})


class HalfFaces(Method):
    """The input for prompt 0, a grey image (no face) for the others."""

    kind = "half"

    def __init__(self) -> None:
        super().__init__(MethodSpec("half", text="half"))

    def generate(self, image, prompt, seed, **context):
        if context["prompt_index"] == 0:
            return ImageOps.mirror(image)
        return Image.new("RGB", (96, 96), (128, 128, 128))


def test_ffc_counts_face_free_outputs_and_face_metrics_record_failures(tmp_path, astronaut_path):
    pytest.importorskip("dlib")
    hub = M.ModelHub()
    reason = hub.check(M.METRICS["face_sim_dlib"])
    if reason is not None:
        pytest.skip(reason)
    small = tmp_path / "astronaut.png"
    Image.open(astronaut_path).convert("RGB").resize((256, 256), Image.LANCZOS).save(small)
    out = tmp_path / "run"
    cfg = EvaluationConfig(
        faces=[small],
        prompts=PROMPTS[:2],
        methods={"half": HalfFaces()},
        metrics=["ffc", "face_sim_dlib"],
        seeds=[0, 1],
        out=out,
        progress=False,
    )
    Evaluator(cfg, hub=hub).run()
    with ResultStore(out) as store:
        ffc = [r.value for r in store.rows(metric="ffc")]
        sims = store.rows(metric="face_sim_dlib")
    assert sorted(ffc) == [0.0, 0.0, 1.0, 1.0]
    assert sorted(r.status for r in sims) == ["failed", "failed", "ok", "ok"]
    assert all("no face" in r.error for r in sims if r.status == "failed")
    assert all(r.value > 0.95 for r in sims if r.status == "ok")
    assert "| half | " in (out / "report.md").read_text()
    assert "2 / 4" in (out / "report.md").read_text()


def test_dlib_face_similarity_on_the_real_portraits(portraits):
    pytest.importorskip("dlib")
    hub = M.ModelHub()
    reason = hub.check(M.METRICS["face_sim_dlib"])
    if reason is not None:
        pytest.skip(reason)
    astronaut, grace = portraits
    fn = M.METRICS["face_sim_dlib"].fn
    mirror = fn(M.ItemContext(astronaut, ImageOps.mirror(astronaut), "p", hub, input_key="a"))
    other = fn(M.ItemContext(astronaut, grace, "p", hub, input_key="a"))
    assert mirror > 0.97
    assert other < 0.93
    assert mirror - other > 0.05


def test_method_specs_parse_and_validate(tiny_model_dir):
    spec = parse_method_spec("edit:runs/x,steps=1,iterations=2,guidance_scale=1.5,dtype=fp16")
    assert (spec.kind, spec.path) == ("edit", "runs/x")
    assert spec.options == {"steps": 1, "iterations": 2, "guidance_scale": 1.5, "dtype": "fp16"}
    name, spec = parse_method_arg("ipnet=edit:DIR,steps=1")
    assert name == "ipnet" and spec.path == "DIR" and spec.options == {"steps": 1}
    name, spec = parse_method_arg("edit:DIR,steps=4")
    assert name == "edit-steps4" and spec.path == "DIR"
    assert parse_method_spec("identity").kind == "identity"
    for bad in ("", "edit:DIR,steps", "9x:DIR", "edit:DIR,bad-key=1"):
        with pytest.raises(InputError):
            parse_method_spec(bad)
    with pytest.raises(InputError, match="unknown setting"):
        build_method(f"edit:{tiny_model_dir},stepz=1")
    with pytest.raises(InputError, match="positive integer"):
        build_method(f"edit:{tiny_model_dir},steps=0")
    with pytest.raises(InputError, match="unknown"):
        method_class("nonesuch")
    method = build_method(f"edit:{tiny_model_dir},steps=1,iterations=2,resolution=64")
    cost = method.cost()
    assert cost["steps"] == 2 and cost["params"] == sum(
        p.numel() for p in method.pipe.unet.parameters()
    )


def test_methods_not_written_yet_register_by_name(monkeypatch):
    monkeypatch.setitem(METHOD_MODULES, "future", "instantportrait.pipelines.not_yet:Future")
    with pytest.raises(InputError, match="not available in this version"):
        method_class("future")
    for kind in ("fastface", "faceanet", "fpga"):
        assert kind in METHOD_MODULES

    @register_method("echo-test")
    class Echo(Method):
        def generate(self, image, prompt, seed, **context):
            return image

    try:
        assert isinstance(build_method("echo-test"), Echo)
    finally:
        from instantportrait.evaluation.methods import METHODS

        METHODS.pop("echo-test")


def test_shipped_protocols_and_prompt_files(tmp_path):
    assert {"instantportrait", "fastface"} <= set(list_protocols())
    assert {"faceanet", "fpga_half_body", "fpga_full_body", "fpga_multi_id"} <= set(
        list_protocols()
    )
    assert not any(n.endswith("_reference") for n in list_protocols())  # published rows
    ip = load_protocol("instantportrait")
    assert "wearing a 1920s flapper dress, feathered headband" in [p.text for p in ip.prompts]
    assert ip.metrics[:3] == ["face_sim_facenet", "face_sim_arcface", "face_sim_dlib"]
    ff = load_protocol("fastface")
    assert ff.splits == ["realistic", "stylistic"]
    from instantportrait.evaluation.metric_fns import style_part

    assert all(style_part(p.text) for p in ff.prompts if p.split == "stylistic")
    assert not any(style_part(p.text) for p in ff.prompts if p.split == "realistic")

    txt = tmp_path / "p.txt"
    txt.write_text("# c\n[a]\nwearing a hat\n\n[b]\noil painting; person\n")
    prompts = read_prompts(txt)
    assert [(p.text, p.split, p.index) for p in prompts] == [
        ("wearing a hat", "a", 0),
        ("oil painting; person", "b", 1),
    ]
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"name": "mine", "prompts": ["x", "y"], "seeds": 2}))
    proto = load_protocol(mine)
    assert proto.name == "mine" and proto.seeds == 2 and len(proto.prompts) == 2
    mine.write_text(json.dumps({"prompts": ["x"], "metrics": ["nope"]}))
    with pytest.raises(InputError, match="nope"):
        load_protocol(mine)
    with pytest.raises(InputError, match="unknown"):
        load_protocol("no-such-protocol")


def test_a_name_keeps_its_spec_in_a_store(tmp_path, small_faces, mean_metric):
    out = tmp_path / "run"
    Evaluator(_config(small_faces, out, {"m": CountingMethod()}, metrics=("test_mean",))).run()
    other = CountingMethod()
    other.spec = MethodSpec("counting", options={"tag": 5}, text="counting,other")
    with pytest.raises(InputError, match="another name"):
        Evaluator(_config(small_faces, out, {"m": other}, metrics=("test_mean",))).run()


class SweepMethod(Method):
    """Counting outputs; ``steps`` is a swept setting."""

    kind = "sweep"
    options = ("steps",)

    def generate(self, image, prompt, seed, **context):
        return Image.new("RGB", (8, 8), (10 * self.spec.get("steps"), 0, 0))

    def cost(self):
        return {"params": 10, "steps": self.spec.get("steps")}


def test_pareto_joins_a_swept_setting(tmp_path, small_faces, monkeypatch):
    from instantportrait.evaluation.figures import _sweeps

    # cheap stand-ins for the two axes: identity falls and text fidelity rises with steps
    def face(ctx):
        return 1.0 - ctx.tensor("output")[0, 0].mean().item()

    def text(ctx):
        return ctx.tensor("output")[0, 0].mean().item()

    monkeypatch.setitem(M.METRICS, "face_sim_dlib", M.Metric("face_sim_dlib", "Face", "item", face))
    monkeypatch.setitem(M.METRICS, "clip_t_vitl14", M.Metric("clip_t_vitl14", "CLIP", "item", text))
    methods = {f"s{k}": SweepMethod(parse_method_spec(f"sweep:model,steps={k}")) for k in (4, 1, 2)}
    out = tmp_path / "run"
    cfg = _config(small_faces, out, methods, metrics=("face_sim_dlib", "clip_t_vitl14", "steps"))
    Evaluator(cfg).run()
    with ResultStore(out) as store:
        assert _sweeps(store.methods()) == [("steps", ["s1", "s2", "s4"])]
    with Image.open(out / "pareto.png") as im:
        assert im.size == (640, 480)
    csv_rows = (out / "report.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in csv_rows[1:]] == ["s4", "s1", "s2"]
