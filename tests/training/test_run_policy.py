"""The run folder policy, precision choices, the shipped defaults on CPU, the tiny-settings
hint, the face-coverage warning, and resume under a 2-process ``accelerate launch``."""

from __future__ import annotations

import pytest

from instantportrait.cli import main
from instantportrait.training.logger import read_metrics
from launching import launch

TINY_IDENET = [
    "train",
    "idenet",
    "--set",
    "model.pretrained=tiny",
    "--set",
    "data.resolution=64",
    "--set",
    "training.batch_size=2",
    "--set",
    "training.gradient_accumulation_steps=1",
    "--set",
    "training.tensorboard=false",
    "--set",
    "training.num_workers=0",
    "--set",
    "training.validate_every=0",
    "--set",
    "training.mixed_precision=no",
    "--set",
    "training.gradient_checkpointing=false",
    "--set",
    "loss.lambda_aid=0",
]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def test_failed_setup_writes_nothing_and_names_the_tiny_settings(pair_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code, out = run_cli(
        [
            *TINY_IDENET,
            "--set",
            f"data.path={pair_dir}",
            "--set",
            f"model.pretrained={tmp_path / 'no-model'}",
            "--set",
            f"training.output_dir={run}",
        ],
        capsys,
    )
    assert code == 2 and "model.pretrained" in out.err and "model.pretrained=tiny" in out.err
    assert "discriminator.backbone=tiny" in out.err and len(out.err.strip().splitlines()) == 1
    assert not run.exists()  # nothing written: set-up failed
    code, out = run_cli(
        [
            *TINY_IDENET,
            "--set",
            f"data.path={tmp_path / 'nodata'}",
            "--set",
            f"training.output_dir={run}",
        ],
        capsys,
    )
    assert code == 2 and not run.exists()


def test_fp16_on_cpu_is_one_line(pair_dir, tmp_path, capsys):
    code, out = run_cli(
        [
            *TINY_IDENET,
            "--set",
            f"data.path={pair_dir}",
            "--set",
            "training.mixed_precision=fp16",
            "--set",
            f"training.output_dir={tmp_path / 'run'}",
        ],
        capsys,
    )
    assert code == 2 and "training.mixed_precision=fp16: needs a GPU" in out.err
    assert not (tmp_path / "run").exists()


def test_used_folder_refused_resume_latest_starts_fresh_overwrite_replaces(
    pair_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    args = [
        *TINY_IDENET,
        "--set",
        f"data.path={pair_dir}",
        "--set",
        f"training.output_dir={run}",
        "--set",
        "training.max_steps=2",
        "--set",
        "training.log_every=10",  # longer than the run: the first row is still written
    ]
    code, out = run_cli([*args, "--resume", "latest"], capsys)  # absent folder
    assert code == 0, out.err
    assert "no checkpoint" in out.out and "starting fresh" in out.out
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # first row, and the last
    assert (run / "checkpoints" / "step-000002" / "model.safetensors").is_file()
    code, out = run_cli(args, capsys)  # the same folder again, without a flag
    assert code == 2 and "already exists" in out.err and "--overwrite" in out.err
    assert (run / "checkpoints" / "step-000002").is_dir()  # untouched
    with pytest.raises(SystemExit) as stop:  # argparse: not both
        run_cli([*args, "--resume", "latest", "--overwrite"], capsys)
    assert stop.value.code == 2
    (run / "stale.txt").write_text("old run")
    code, out = run_cli([*args, "--overwrite", "--set", "training.max_steps=1"], capsys)
    assert code == 0, out.err
    assert not (run / "stale.txt").exists() and not (run / "checkpoints" / "step-000002").exists()
    assert [r["step"] for r in read_metrics(run)] == [1]


def test_shipped_idenet_defaults_run_on_cpu(pair_dir, tmp_path, capsys):
    """The shipped config (precision auto: fp32 on the CPU, gradient checkpointing, EMA with
    warm-up, face-window identity loss, workers from the machine) with only the size made
    tiny."""
    run = tmp_path / "run"
    code, out = run_cli(
        [
            "train",
            "idenet",
            "--set",
            "model.pretrained=tiny",
            "--set",
            f"data.path={pair_dir}",
            "--set",
            "data.resolution=64",
            "--set",
            "data.detect_faces=false",
            "--set",
            f"training.output_dir={run}",
            "--set",
            "training.max_steps=1",
            "--set",
            "training.batch_size=2",
            "--set",
            "training.gradient_accumulation_steps=1",
            "--set",
            "training.tensorboard=false",
        ],
        capsys,
    )
    assert code == 0, out.err
    assert "precision: fp32 (training.mixed_precision=auto on cpu" in out.out
    row = read_metrics(run)[0]
    assert row["step"] == 1 and row["loss"] == row["loss"]  # logged, not NaN
    assert (run / "final" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_shipped_ipnet_defaults_run_on_cpu(pair_dir, tmp_path, capsys):
    """IPNet in bf16 (once the shipped default) crashed (teacher outside autocast): one
    low-stage step, bf16 asked for explicitly on the CPU (it warns, and still runs)."""
    run = tmp_path / "run"
    code, out = run_cli(
        [
            "train",
            "ipnet",
            "--teacher",
            "tiny",
            "--stage",
            "low",
            "--set",
            "discriminator.backbone=tiny",
            "--set",
            "triplet.dino=tiny",
            "--set",
            f"data.path={pair_dir}",
            "--set",
            "data.resolution=64",
            "--set",
            "data.detect_faces=false",
            "--set",
            f"training.output_dir={run}",
            "--set",
            "training.max_steps=1",
            "--set",
            "training.batch_size=2",
            "--set",
            "training.gradient_accumulation_steps=1",
            "--set",
            "training.tensorboard=false",
            "--set",
            "training.mixed_precision=bf16",
        ],
        capsys,
    )
    assert code == 0, out.err
    assert "warning: training.mixed_precision=bf16 on the CPU" in out.err
    row = read_metrics(run)[0]
    assert row["step"] == 1 and row["loss_g"] == row["loss_g"]
    assert "triplet_d1" in row and "triplet_d2" in row and row["face_fraction"] == 1.0


def test_identity_term_without_faces_warns_once(pair_dir_no_landmarks, tmp_path):
    from test_idenet import SmallIDENet  # tests/training is on sys.path

    from instantportrait.training.config import from_dict
    from instantportrait.training.idenet import IDENetConfig

    cfg = from_dict(
        IDENetConfig,
        {
            "model": {"pretrained": "tiny"},
            "data": {"path": str(pair_dir_no_landmarks), "resolution": 32},  # too small to find
            "training": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 2,
                "batch_size": 2,
                "tensorboard": False,
                "num_workers": 0,
            },
        },
    )
    with pytest.warns(UserWarning, match=r"identity term saw a face in 0 of 4 samples") as seen:
        SmallIDENet(cfg).fit()
    assert len([w for w in seen if "face fraction" in str(w.message)]) == 1


def ddp_args(pair_dir, run, steps):
    return [
        *TINY_IDENET,
        "--set",
        f"data.path={pair_dir}",
        "--set",
        "training.batch_size=1",
        "--set",
        "training.checkpoint_every=2",
        "--set",
        "training.log_every=1",
        "--set",
        f"training.output_dir={run}",
        "--set",
        f"training.max_steps={steps}",
    ]


@pytest.mark.multiprocess
def test_resume_under_two_processes(pair_dir, tmp_path):
    run = tmp_path / "ddp"
    launch(ddp_args(pair_dir, run, 2))
    ckpt = run / "checkpoints" / "step-000002"
    assert {"model.safetensors", "random_states_0.pkl", "random_states_1.pkl"} <= {
        p.name for p in ckpt.iterdir()
    }
    proc = launch([*ddp_args(pair_dir, run, 3), "--resume", "latest"])
    assert "resumed from" in proc.stdout
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert (run / "final" / "model_index.json").is_file()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_under_two_processes_is_exact(pair_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(ddp_args(pair_dir, one, 4))
    launch(ddp_args(pair_dir, two, 2))
    launch([*ddp_args(pair_dir, two, 4), "--resume", "latest"])
    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [1, 2, 3, 4] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == rb["loss"], ra["step"]
