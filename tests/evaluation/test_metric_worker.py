"""Metrics in their own environment (Q-Align, ImageReward): the worker protocol, the
harness's one-line failures, the real worker scripts' protocol path, and the metrics' wiring."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from instantportrait.errors import MissingDependencyError
from instantportrait.evaluation import metric_envs
from instantportrait.evaluation.metric_worker import MetricWorker, MetricWorkerError

FAKE = """
import sys
sys.path.insert(0, {scripts!r})
from protocol import serve

def load(weights, device):
    if weights == "bad":
        raise FileNotFoundError("no such model here")
    print("a library printing while it loads")  # must not break the protocol
    return float(weights)

def score(offset, request):
    from PIL import Image
    if request["task"] == "boom":
        raise ValueError("cannot score this one")
    if request["task"] == "crash":
        print("dying now", file=sys.stderr)
        sys.exit(3)
    red = Image.open(request["image"]).getpixel((0, 0))[0]
    return red + offset + len(request["text"])

sys.exit(serve(load, score))
"""


@pytest.fixture
def fake_worker(tmp_path) -> Path:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE.format(scripts=str(metric_envs.WORKER_SCRIPTS)))
    return script


def _worker(script: Path, weights: str = "0.5") -> MetricWorker:
    return MetricWorker("fake", weights, python=sys.executable, script=script, call_timeout=60)


def test_scores_come_back_in_order_for_each_image(fake_worker):
    w = _worker(fake_worker)
    try:
        # red channel + the loaded offset + len(text), computed by hand
        assert w.score(Image.new("RGB", (8, 8), (10, 0, 0)), text="abc") == 13.5
        assert w.score(Image.new("RGB", (8, 8), (200, 5, 5)), text="") == 200.5
    finally:
        w.close()
    assert w.proc.poll() == 0  # closing its input ended it


def test_one_item_failing_is_one_line_and_the_worker_goes_on(fake_worker):
    w = _worker(fake_worker)
    try:
        with pytest.raises(MetricWorkerError, match="fake: ValueError: cannot score this one"):
            w.score(Image.new("RGB", (4, 4)), task="boom")
        assert w.score(Image.new("RGB", (4, 4), (7, 0, 0))) == 7.5
    finally:
        w.close()


def test_a_crash_names_the_exit_code_and_the_last_line(fake_worker):
    w = _worker(fake_worker)
    with pytest.raises(MetricWorkerError, match=r"ended \(exit 3\) while scoring: dying now"):
        w.score(Image.new("RGB", (4, 4)), task="crash")


def test_a_model_that_does_not_load_is_one_line(fake_worker):
    with pytest.raises(MetricWorkerError, match="loading bad: FileNotFoundError: no such model"):
        _worker(fake_worker, "bad")


def test_a_missing_environment_names_the_command_that_creates_it(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANTPORTRAIT_METRIC_ENVS", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="metric-env create q-align"):
        MetricWorker("q-align", "q-future/one-align")
    # and the harness reports the metric unavailable with that line, not a traceback
    import torch

    from instantportrait.evaluation.metrics.registry import MetricUnavailable, ModelHub

    hub = ModelHub({}, torch.device("cpu"))
    with pytest.raises(MetricUnavailable, match="metric-env create imagereward"):
        hub.get("imagereward")


@pytest.mark.parametrize("name", ["q-align", "imagereward"])
def test_real_worker_scripts_speak_the_protocol(name, tmp_path):
    """The shipped scripts, run by this interpreter (which lacks their pinned packages or a
    model): the failure arrives as the protocol's one line, naming what was loaded."""
    missing = tmp_path / "no-model"
    with pytest.raises(MetricWorkerError, match=rf"{name}: loading {missing}"):
        MetricWorker(name, str(missing), python=sys.executable, load_timeout=120)


def test_qalign_asks_for_aesthetics_as_its_code_names_it():
    sys.path.insert(0, str(metric_envs.WORKER_SCRIPTS))
    try:
        import qalign
    finally:
        sys.path.remove(str(metric_envs.WORKER_SCRIPTS))
    assert qalign.TASKS["aesthetic"] == "aesthetics" and qalign.TASKS["quality"] == "quality"


def test_metrics_send_their_text_and_task_to_the_worker():
    from instantportrait.evaluation.metrics import quality

    calls = []

    class Worker:
        def score(self, image, text="", task=""):
            calls.append((image.size, text, task))
            return 1.25

    class Ctx:
        text = "a photo of a person, oil painting"
        output_image = Image.new("RGB", (16, 8))

        class hub:  # noqa: N801 - a stand-in namespace
            @staticmethod
            def get(key):
                assert key in ("q-align", "imagereward")
                return Worker()

    assert quality.qalign("aesthetic")(Ctx) == 1.25
    assert quality.imagereward(Ctx) == 1.25
    assert calls == [((16, 8), "", "aesthetic"), ((16, 8), Ctx.text, "")]


def test_create_runs_pinned_installs_then_downloads_into_its_own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANTPORTRAIT_METRIC_ENVS", str(tmp_path))
    cmds = metric_envs.creation_commands("imagereward")
    installs = [c for c in cmds if "install" in c and "--upgrade" not in c]
    assert len(installs) == 1 and "image-reward" in installs[0]
    assert any(a.startswith("torch==") for a in installs[0])
    downloads = [c for c in cmds if c[1] == "-c"]
    assert [c[-1] for c in downloads] == [str(tmp_path / "imagereward" / "hf-cache")] * 3
    assert all(c[0] == str(tmp_path / "imagereward" / "bin" / "python") for c in cmds)
    assert len(metric_envs.creation_commands("imagereward", download=False)) == 2
