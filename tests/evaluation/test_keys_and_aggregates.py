"""Issue 18: results keyed by everything that determines them; only the current run reported;
group and set metrics recomputed when their members change; report statistics; concurrent
runs splitting the work; the method model checked up front; the folder method re-reading a
run's outputs; ``evaluate()`` from Python."""

from __future__ import annotations

import csv
import math
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.errors import InputError, ModelNotFoundError
from instantportrait.evaluation import metrics as M
from instantportrait.evaluation.methods import Method, MethodSpec, parse_method_spec
from instantportrait.evaluation.protocols import Prompt
from instantportrait.evaluation.runner import EvaluationConfig, Evaluator, evaluate
from instantportrait.evaluation.store import ResultStore, StoreBusy


class Tinted(Method):
    """Deterministic non-trivial outputs: the input, tinted by ``tint`` and the prompt."""

    kind = "tinted"
    options = ("tint", "sleep")

    def __init__(self, tint: int = 0, sleep: float = 0.0, dtype=None) -> None:
        spec = MethodSpec("tinted", options={"tint": tint, "sleep": sleep}, text=f"tinted,{tint}")
        super().__init__(spec, dtype=dtype)
        self.calls = 0

    def generate(self, image, prompt, seed, **context):
        self.calls += 1
        if self.spec.get("sleep"):
            time.sleep(self.spec.get("sleep"))
        arr = np.asarray(image.resize((32, 32)), dtype=np.int16)
        shift = 7 * self.spec.get("tint") + sum(prompt.encode()) % 97 + 3 * seed
        arr = (arr + shift) % 256
        return Image.fromarray(arr.astype(np.uint8))


@pytest.fixture
def faces(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        p = folder / name
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _prompts(*texts, split="all"):
    return [Prompt(t, split, i) for i, t in enumerate(texts)]


def _rows(out):
    return list(csv.DictReader((out / "report.csv").open()))


@pytest.fixture
def text_metric(monkeypatch):
    """A registered item metric that reads the text template (the length of ``ctx.text``)."""
    calls = []

    def fn(ctx):
        calls.append(ctx.text)
        return float(len(ctx.text))

    metric = M.Metric("test_text", "Text length", "item", fn, uses_template=True)
    monkeypatch.setitem(M.METRICS, "test_text", metric)
    return calls


def _cfg(faces, out, methods, metrics, prompts=None, **kw):
    return EvaluationConfig(
        faces=faces,
        prompts=prompts or _prompts("wearing a hat", "as a statue"),
        methods=methods,
        metrics=list(metrics),
        seeds=[0],
        out=out,
        progress=False,
        **kw,
    )


def test_a_changed_text_template_recomputes_and_the_report_shows_the_new_numbers(
    tmp_path, faces, text_metric
):
    out = tmp_path / "run"
    Evaluator(_cfg(faces, out, {"m": Tinted()}, ["test_text"])).run()
    first = float(_rows(out)[0]["test_text"])
    assert first == pytest.approx((len("wearing a hat") + len("as a statue")) / 2)
    text_metric.clear()
    cfg = _cfg(faces, out, {"m": Tinted()}, ["test_text"], text_template="a photo, {prompt}")
    summary = Evaluator(cfg).run()
    assert len(text_metric) == 4 and summary.generated == 0  # outputs reused, metric redone
    assert float(_rows(out)[0]["test_text"]) == pytest.approx(first + len("a photo, "))
    assert "a photo, {prompt}" in (out / "report.md").read_text()


def test_changed_metric_weights_dtype_and_folder_images_give_new_keys(
    tmp_path, faces, tiny_clip, rand_images
):
    out = tmp_path / "run"
    # metric weights: another (ready) CLIP model object -> the metric is recomputed
    cfg = _cfg(faces, out, {"m": Tinted()}, ["clip_i"], weights={"clip-vit-l-14": tiny_clip})
    Evaluator(cfg).run()
    before = float(_rows(out)[0]["clip_i"])
    other = type(tiny_clip)(tiny_clip.config).eval()
    cfg = _cfg(faces, out, {"m": Tinted()}, ["clip_i"], weights={"clip-vit-l-14": other})
    summary = Evaluator(cfg).run()
    assert summary.rows_written == 4 and float(_rows(out)[0]["clip_i"]) != pytest.approx(before)

    # dtype: a new identity for the method, outputs regenerated
    method = Tinted(dtype=torch.float16)
    summary = Evaluator(
        _cfg(faces, out, {"m": method}, ["clip_i"], weights={"clip-vit-l-14": other})
    ).run()
    assert method.calls == 4 and summary.generated == 4

    # folder: the images behind a folder: method changed -> recomputed
    folder = tmp_path / "made"
    for face in faces:
        (folder / face.stem).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rand_images(1, 32, i)[0].mul(255).byte().permute(1, 2, 0).numpy()).save(
                folder / face.stem / f"{i:03d}_s0.png"
            )
    fcfg = dict(weights={"clip-vit-l-14": tiny_clip})
    out2 = tmp_path / "folder-run"
    Evaluator(_cfg(faces, out2, {"f": f"folder:{folder}"}, ["clip_i"], **fcfg)).run()
    v1 = float(_rows(out2)[0]["clip_i"])
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "a" / "000_s0.png")
    summary = Evaluator(_cfg(faces, out2, {"f": f"folder:{folder}"}, ["clip_i"], **fcfg)).run()
    assert summary.generated == 4 and float(_rows(out2)[0]["clip_i"]) != pytest.approx(v1)


def test_a_rerun_with_fewer_prompts_reports_only_its_items(tmp_path, faces, text_metric):
    out = tmp_path / "run"
    Evaluator(_cfg(faces, out, {"m": Tinted()}, ["test_text"])).run()
    Evaluator(_cfg(faces, out, {"m": Tinted()}, ["test_text"], prompts=_prompts("old"))).run()
    row = _rows(out)[0]
    assert row["test_text_n"] == "2" and float(row["test_text"]) == len("old")
    # and a changed input photo is a new item too
    Image.new("RGB", (32, 32), (1, 2, 3)).save(faces[0])
    summary = Evaluator(
        _cfg(faces, out, {"m": Tinted()}, ["test_text"], prompts=_prompts("old"))
    ).run()
    assert summary.generated == 1 and summary.already_done == 1


def test_a_changed_spec_under_an_old_name_is_refused(tmp_path, faces, text_metric):
    out = tmp_path / "run"
    Evaluator(_cfg(faces, out, {"m": Tinted(1)}, ["test_text"])).run()
    with pytest.raises(InputError, match="another name"):
        Evaluator(_cfg(faces, out, {"m": Tinted(2)}, ["test_text"])).run()


def test_report_statistics_are_the_sample_mean_and_std(tmp_path, faces, monkeypatch):
    values = iter([1.0, 2.0, 3.0, 4.0])
    monkeypatch.setitem(
        M.METRICS, "test_seq", M.Metric("test_seq", "Seq", "item", lambda c: next(values))
    )
    out = tmp_path / "run"
    Evaluator(_cfg(faces, out, {"m": Tinted()}, ["test_seq"])).run()
    row = _rows(out)[0]
    assert float(row["test_seq"]) == pytest.approx(2.5)
    # sample std: sqrt(sum (x - 2.5)^2 / (4 - 1)) = sqrt(5 / 3); population would be sqrt(5/4)
    assert float(row["test_seq_std"]) == pytest.approx(math.sqrt(5 / 3), rel=1e-5)
    assert "2.5000 ± 1.2910 (n=4)" in (out / "report.md").read_text()


def test_group_and_set_metrics_run_end_to_end_and_follow_their_members(
    tmp_path, faces, tiny_lpips, tiny_dino
):
    from instantportrait.evaluation import metric_fns as fns

    weights = {"lpips": tiny_lpips, "dinov2": tiny_dino}
    out = tmp_path / "run"
    prompts = _prompts("p0", "p1", "p2")
    with pytest.warns(UserWarning, match="fewer samples than dimensions"):
        Evaluator(
            _cfg(
                faces, out, {"m": Tinted()}, ["intra_lpips", "fd_dinov2"], prompts, weights=weights
            )
        ).run()
    with ResultStore(out) as store:
        rows = {(r.metric, r.face): r for r in store.rows()}
        outputs = {(o["face"], o["prompt"]): o["path"] for o in store.outputs()}
    # Intra-LPIPS of subject a by hand: mean over the 3 pairs of its outputs
    imgs = fns.pil_to_tensor(
        [Image.open(out / outputs[("a", t)]).convert("RGB") for t in ("p0", "p1", "p2")]
    )
    pairs = [(0, 1), (0, 2), (1, 2)]
    by_hand = sum(float(tiny_lpips(imgs[i : i + 1], imgs[j : j + 1])) for i, j in pairs) / 3
    assert rows[("intra_lpips", "a")].value == pytest.approx(by_hand, rel=1e-5)
    # FD-DINOv2 by hand from the features of the 6 outputs and the 2 inputs: dgm-eval's
    # input (PIL bicubic to 224x224, ImageNet normalisation), the CLS token after the norm
    from instantportrait.faces.dino import IMAGENET_MEAN, IMAGENET_STD

    def dino(im):
        x = torch.from_numpy(np.asarray(im.resize((224, 224), Image.BICUBIC), np.float32) / 255)
        x = (
            x.permute(2, 0, 1)[None] - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        ) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return tiny_dino.model(pixel_values=x).pooler_output

    outs = [Image.open(out / p).convert("RGB") for p in outputs.values()]
    feats_o = torch.cat([dino(im) for im in outs])
    feats_r = torch.cat([dino(Image.open(f).convert("RGB")) for f in faces])
    fd = rows[("fd_dinov2", "*")]
    assert fd.value == pytest.approx(fns.frechet_distance_from_features(feats_o, feats_r), rel=1e-4)
    assert fd.detail["n_outputs"] == 6 and fd.detail["n_references"] == 2
    md = (out / "report.md").read_text()
    assert "n=6 vs 2 refs" in md and "biased" in md

    # swap one prompt for another: same counts, new members -> both recomputed
    swapped = _prompts("p0", "p1", "p3")
    with pytest.warns(UserWarning):
        Evaluator(
            _cfg(
                faces, out, {"m": Tinted()}, ["intra_lpips", "fd_dinov2"], swapped, weights=weights
            )
        ).run()
    with ResultStore(out) as store:
        fresh = {(r.metric, r.face): r for r in store.rows() if r.prompt.startswith("*")}
    assert fresh[("fd_dinov2", "*")].value != pytest.approx(fd.value)
    assert fresh[("intra_lpips", "a")].members != rows[("intra_lpips", "a")].members
    row = _rows(out)[0]
    assert float(row["fd_dinov2"]) == pytest.approx(fresh[("fd_dinov2", "*")].value, rel=1e-4)


def test_runs_opening_a_new_store_together_create_it_once(tmp_path):
    """Two or three runs that open one fresh folder at the same moment: SQLite's switch to WAL
    fails at once without its busy wait, and a reader could see the tables before their
    schema version. Both raced here (about one open in eight and one in thirty); none may."""
    for trial in range(60):
        folder = tmp_path / f"t{trial}"
        errors: list[Exception] = []

        def open_close(folder=folder, errors=errors):
            try:
                ResultStore(folder).close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=open_close) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"trial {trial}: {errors[0]!r}"
        with ResultStore(folder) as store:
            assert store.count() == 0


def test_concurrent_runs_split_the_work(tmp_path, faces, text_metric):
    out = tmp_path / "run"
    prompts = _prompts(*[f"prompt {i}" for i in range(6)])
    methods = [Tinted(sleep=0.05), Tinted(sleep=0.05)]
    errors = []

    def go(m):
        try:
            Evaluator(_cfg(faces, out, {"m": m}, ["test_text"], prompts, report=False)).run()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(m,)) for m in methods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(m.calls for m in methods) == 12  # every item generated once in all
    assert min(m.calls for m in methods) > 0  # both did a share
    with ResultStore(out) as store:
        assert store.count() == 12


def test_a_busy_store_is_one_clear_line(tmp_path):
    holder = ResultStore(tmp_path)
    holder.conn.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy, match="busy: another evaluate"):  # noqa: PT012
            other = ResultStore(tmp_path, timeout=0.2)
            try:
                other.set_meta("x", 1)
            finally:
                other.close()
    finally:
        holder.conn.execute("ROLLBACK")
        holder.close()


def test_a_missing_method_model_is_refused_before_anything_is_written(tmp_path, faces):
    from instantportrait.cli import main

    out = tmp_path / "o"
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        evaluate(faces, ["x"], {"m": f"edit:{tmp_path / 'no-such-model'}"}, "offline", out)
    assert not out.exists()
    code = main(
        [
            "evaluate",
            "--faces",
            str(faces[0].parent),
            "--method",
            f"m=edit:{tmp_path}/nope",
            "--metrics",
            "steps",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 2 and not out.exists()


def test_the_folder_method_reads_a_runs_own_outputs(tmp_path, faces, text_metric):
    out = tmp_path / "run"
    monkey = {"m": Tinted(3)}
    Evaluator(_cfg(faces, out, monkey, ["test_text"])).run()
    again = tmp_path / "again"
    summary = Evaluator(
        _cfg(faces, again, {"f": f"folder:{out / 'outputs' / 'm'}"}, ["test_text"])
    ).run()
    assert summary.failed_outputs == 0 and summary.generated == 4
    for a, b in zip(
        sorted((out / "outputs").rglob("*.png")), sorted((again / "outputs").rglob("*.png"))
    ):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_evaluate_from_python_takes_a_folder_and_offline(tmp_path, faces):
    summary = evaluate(
        faces[0].parent,
        ["x", "y"],
        {"ident": "identity"},
        "offline",
        tmp_path / "o",
        seeds=1,
        progress=False,
    )
    assert summary.items == 4
    with ResultStore(tmp_path / "o") as store:
        assert set(store.meta()["config"]["metrics"]) == set(M.OFFLINE_METRICS)
    with pytest.raises(InputError, match="unknown metric"):
        evaluate(faces, ["x"], {"i": "identity"}, "offline,nope", tmp_path / "p")


def test_pareto_with_a_single_real_split_and_its_dominance(tmp_path, faces, monkeypatch):
    from instantportrait.evaluation.figures import pareto_front, pareto_plot
    from instantportrait.evaluation.report import summarize

    assert pareto_front({"a": (1, 1), "b": (2, 0.5), "c": (0.5, 0.5), "d": (2, 0.4)}) == ["a", "b"]

    def face(ctx):
        return 1.0 - ctx.tensor("output").mean().item()

    def text(ctx):
        return ctx.tensor("output").mean().item()

    monkeypatch.setitem(M.METRICS, "face_sim_dlib", M.Metric("face_sim_dlib", "Face", "item", face))
    monkeypatch.setitem(M.METRICS, "clip_t_vitl14", M.Metric("clip_t_vitl14", "CLIP", "item", text))
    methods = {f"t{k}": Tinted(k) for k in (1, 5, 9)}
    out = tmp_path / "run"
    prompts = _prompts("a", "b", split="realistic")
    Evaluator(_cfg(faces, out, methods, ["face_sim_dlib", "clip_t_vitl14"], prompts)).run()
    with ResultStore(out) as store:
        table = summarize(store)
        assert {s for _, s in table} == {"realistic"}
        note = pareto_plot(tmp_path / "p.png", store, table)
    assert note == ""  # every method plotted (an empty plot says "no values ...")
    assert "(split: realistic)" not in note


def test_spec_strings_parse_for_the_registry(monkeypatch):
    from instantportrait.evaluation.methods import METHOD_KINDS, method_class

    assert {"identity", "edit", "folder", "fastface", "faceanet", "fpga"} <= set(METHOD_KINDS)
    assert method_class("fpga").__name__ == "FPGAMethod"  # its class has arrived
    monkeypatch.setitem(METHOD_KINDS, "missing-test", "instantportrait.evaluation.kinds.nosuch:X")
    with pytest.raises(InputError, match="not available in this version"):
        method_class("missing-test")
    monkeypatch.setitem(METHOD_KINDS, "tinted-test", f"{__name__}:Tinted")
    cls = method_class("tinted-test")
    assert cls is Tinted
    assert parse_method_spec("tinted-test:x,tint=2").options == {"tint": 2}
