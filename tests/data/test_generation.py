"""Pair generation: filters recorded and enforced, shards by rank, exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from instantportrait.cli import main
from instantportrait.data.filters import FilterConfig, PairFilter
from instantportrait.data.generation import GenerationJob, summary_table
from instantportrait.data.pair_drawing import GenerationSettings
from instantportrait.data.pairs import open_pair_source
from instantportrait.data.prompts import write_prompts
from instantportrait.errors import InputError
from launching import launch

SMALL = GenerationSettings(width=64, height=48, target_steps=1, input_steps=1, image_format="png")


def tar_keys(path):
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".")[0] for m in tar.getmembers()})


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    write_prompts(path, 8, seed=0)
    return path


@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "worker-process"])
def test_filter_reasons_are_recorded_and_filtered_rows_never_reach_a_shard(
    tmp_path, prompts, faces, scripted_backend, workers
):
    pytest.importorskip("dlib")
    script = [
        (faces["a_mirror"], faces["a"]),  # kept
        (faces["g"], faces["a"]),  # another person
        (faces["noise"], faces["a"]),  # no face in the input
        (faces["a"], faces["noise"]),  # no face in the target
    ]
    out = tmp_path / "out"
    job = GenerationJob(
        prompts,
        out,
        scripted_backend(script),
        SMALL,
        FilterConfig(),
        shard_size=3,
        limit=4,
        filter_workers=workers,
    )
    job.prepare()
    manifest = job.run(progress=False)
    assert manifest["pairs"] == 1
    assert manifest["filtered"] == {
        "no_face_target": 1,
        "no_face_input": 1,
        "small_face": 0,
        "blurry": 0,
        "identity": 1,
    }
    reports = [json.loads((out / f"shard-00000{s}.json").read_text()) for s in (0, 1)]
    reasons = {r["key"]: r["reason"] for rep in reports for r in rep["rows"]}
    assert reasons == {
        "000000000": None,
        "000000001": "identity",
        "000000002": "no_face_input",
        "000000003": "no_face_target",
    }
    assert tar_keys(out / "shard-000000.tar") == ["000000000"]
    assert tar_keys(out / "shard-000001.tar") == []
    source = open_pair_source(out)
    assert len(source) == 1
    ex = source[0]
    assert ex.key == "000000000" and len(ex.landmarks) == 5
    assert ex.keypoints is None  # dlib's detector: dlib's 5 landmarks only, as before
    assert manifest["face_points"] == {
        "detector": "hog",
        "landmarks": "dlib 5 points",
        "keypoints": None,
    }
    row = json.loads(prompts.read_text().splitlines()[0])
    assert ex.instruction == row["instruction"] and ex.extra["identity"] == row["identity"]
    assert ex.extra["filter"]["identity_distance"] < 0.6
    table = summary_table(manifest)
    assert "identity" in table and "throughput" in table


def test_mtcnn_rows_carry_its_own_keypoints_for_the_trainers(
    tmp_path, prompts, faces, scripted_backend
):
    pytest.importorskip("dlib")
    import numpy as np

    from instantportrait.faces.detect import detect

    out = tmp_path / "out"
    job = GenerationJob(
        prompts,
        out,
        scripted_backend([(faces["a_mirror"], faces["a"])]),
        SMALL,
        FilterConfig(detector="mtcnn"),
        limit=1,
    )
    job.prepare()
    manifest = job.run(progress=False)
    assert manifest["pairs"] == 1 and manifest["face_points"]["keypoints"] == "mtcnn"
    ex = open_pair_source(out)[0]
    mtcnn = detect(faces["a_mirror"], method="mtcnn", landmarks="keypoints").keypoints[0]
    np.testing.assert_allclose(ex.keypoints, mtcnn.numpy(), atol=1e-4)
    # dlib's 5 points (on MTCNN's box) stay beside them, and are other points
    assert len(ex.landmarks) == 5
    assert np.abs(np.asarray(ex.landmarks) - np.asarray(ex.keypoints)).max() > 3


def test_two_ranks_take_disjoint_shards_and_the_last_writes_the_manifest(
    tmp_path, prompts, faces, scripted_backend
):
    out = tmp_path / "out"
    no_filter = FilterConfig(enabled=False)
    quiet = PairFilter(no_filter, analyzer=None)
    quiet.landmarks_only = lambda image: None  # no detection needed here
    backends, manifests = [], []
    for rank in (0, 1):
        backend = scripted_backend([(faces["a"], faces["g"])])
        job = GenerationJob(
            prompts,
            out,
            backend,
            SMALL,
            no_filter,
            shard_size=3,
            rank=rank,
            world_size=2,
            pair_filter=quiet,
        )
        job.prepare()
        manifests.append(job.run(progress=False))
        backends.append(backend)
    rows = [{p for kind, p in b.calls if kind == "input"} for b in backends]
    assert rows[0] == {0, 1, 2, 6, 7} and rows[1] == {3, 4, 5}
    assert manifests[0] is None and manifests[1]["pairs"] == 8
    keys = [k for s in range(3) for k in tar_keys(out / f"shard-00000{s}.tar")]
    assert keys == [f"{i:09d}" for i in range(8)]


def test_resume_redoes_only_unfinished_shards_and_refuses_another_job(
    tmp_path, prompts, faces, scripted_backend
):
    no_filter = FilterConfig(enabled=False)
    quiet = PairFilter(no_filter)
    quiet.landmarks_only = lambda image: None

    class Crash(scripted_backend):
        def inputs(self, rows, targets, edges, generators):
            if any(r["_position"] == 4 for r in rows):
                raise KeyboardInterrupt
            return super().inputs(rows, targets, edges, generators)

    out = tmp_path / "out"
    job = GenerationJob(
        prompts,
        out,
        Crash([(faces["a"], faces["g"])]),
        SMALL,
        no_filter,
        shard_size=3,
        pair_filter=quiet,
    )
    job.prepare()
    with pytest.raises(KeyboardInterrupt):
        job.run(progress=False)
    assert job.is_complete(0) and not job.is_complete(1)
    assert not list(out.glob(".*.tmp"))
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    backend = scripted_backend([(faces["a"], faces["g"])])
    job = GenerationJob(prompts, out, backend, SMALL, no_filter, shard_size=3, pair_filter=quiet)
    job.prepare()
    assert job.run(progress=False)["pairs"] == 8
    assert {p for _, p in backend.calls} == {3, 4, 5, 6, 7}
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first
    other = GenerationJob(prompts, out, backend, SMALL, no_filter, shard_size=4)
    with pytest.raises(InputError, match="holds another generation job"):
        other.prepare()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(InputError, match="already exists"):
        GenerationJob(prompts, tmp_path / "used", backend, SMALL, no_filter).prepare()


def test_sigkill_mid_shard_then_restart_gives_each_pair_once(
    tmp_path, tiny_bundle, prompts, subprocess_env
):
    """The real CLI on the tiny bundle, killed with SIGKILL while a shard is being drawn."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "instantportrait",
        "data",
        "generate",
        "--prompts",
        str(prompts),
        "--models",
        str(tiny_bundle),
        "-o",
        str(out),
        "--resolution",
        "64x48",
        "--steps",
        "1",
        "--shard-size",
        "2",
        "--no-filter",
        "--quiet",
        "--device",
        "cpu",
        "--memory",
        "together",
    ]
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "shard-000000.tar").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("shard-*.tar"))
    assert "shard-000003.tar" not in done  # killed before the end
    kept = {name: (out / name).stat().st_mtime_ns for name in done}
    res = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "8 pairs in 4 shards" in res.stdout
    for name, mtime in kept.items():
        assert (out / name).stat().st_mtime_ns == mtime  # finished shards were not redone
    keys = [k for s in range(4) for k in tar_keys(out / f"shard-00000{s}.tar")]
    assert keys == [f"{i:09d}" for i in range(8)]
    assert not list(out.glob(".*.tmp"))
    assert main(["data", "check", str(out)]) == 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_accelerate_launch_two_processes_share_the_shards(tmp_path, tiny_bundle, prompts):
    """`accelerate launch --multi_gpu` (two processes, CPU here; note `--cpu --num_processes 2`
    starts ONE process): disjoint shards by rank, one complete dataset."""
    out = tmp_path / "out"
    launch(["data", "generate", "--prompts", prompts, "--models", tiny_bundle, "-o", out,
            "--resolution", "64x48", "--steps", "1", "--shard-size", "2", "--no-filter",
            "--quiet", "--memory", "together"])  # fmt: skip
    reports = [json.loads((out / f"shard-00000{s}.json").read_text()) for s in range(4)]
    assert [r["first_row"] for r in reports] == [0, 2, 4, 6]
    assert [r["rank"] for r in reports] == [0, 1, 0, 1]  # disjoint, by shard mod 2
    keys = [k for s in range(4) for k in tar_keys(out / f"shard-00000{s}.tar")]
    assert keys == [f"{i:09d}" for i in range(8)]
    assert json.loads((out / "manifest.json").read_text())["pairs"] == 8


def test_a_bad_prompt_row_is_refused_before_anything_is_written(tmp_path, prompts):
    lines = prompts.read_text().splitlines()
    lines[5] = '{"identity": "x", "instruction": ["a"], "target": "x, a"}'
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"p.jsonl:6: 'instruction' is not a string"):
        GenerationJob(prompts, out, None, SMALL, FilterConfig(enabled=False))
    assert not out.exists()


def test_in_turn_frees_each_pipeline_after_its_phase(tiny_bundle):
    import weakref

    from instantportrait.data.models import ModelPaths, PipelineCache

    cache = PipelineCache(ModelPaths.from_bundle(tiny_bundle), "cpu", memory="in-turn")
    with cache.use("target") as pipe:
        ref = weakref.ref(pipe.unet)
        del pipe
    assert ref() is None  # gone before the input pipeline loads
    together = PipelineCache(ModelPaths.from_bundle(tiny_bundle), "cpu", memory="together")
    with together.use("target") as pipe:
        ref = weakref.ref(pipe.unet)
        del pipe
    assert ref() is not None
    with pytest.raises(InputError, match="model-offload: needs a CUDA device"):
        PipelineCache(ModelPaths.from_bundle(tiny_bundle), "cpu", memory="model-offload")


def test_a_missing_model_is_refused_before_anything_is_written(tmp_path, prompts, capsys):
    out = tmp_path / "out"
    models = [
        "--target-model",
        str(tmp_path / "nope"),
        "--controlnet",
        "x/y",
        "--ip-adapter",
        "a/b",
    ]
    args = ["data", "generate", "--prompts", str(prompts), "-o", str(out), "--no-filter", *models]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--target-model" in err and "no model_index.json there" in err
    assert not out.exists()
