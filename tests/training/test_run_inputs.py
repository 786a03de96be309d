"""What every trainer checks before it loads a model or writes its run folder: a dataset that
fills one batch, the run's inputs (not demanded by ``--dry-run``), FPGA's ``stage_steps``;
and the machine-dependent choices it states: precision ``auto`` and the data-loading workers."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from instantportrait.cli import main
from instantportrait.errors import InputError
from instantportrait.training import run_settings
from instantportrait.training.logger import MetricsLogger
from instantportrait.training.run_settings import (
    check_batch_fits,
    resolve_num_workers,
    resolve_precision,
)


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def sets(*items):
    return [a for s in items for a in ("--set", s)]


# ---------------------------------------------------------------- a dataset short of a batch
def short_of_a_batch(tmp_path, pair_dir, portrait_dir):
    """Each trainer on a 4-example dataset with a batch of 8 (FPGA: its shipped 16), and a
    model path that does not exist: the batch check must come before any model loads. (FPGA
    and RepControlNet check their base's layout from its config first, a named missing model
    being one line of its own: they get the tiny base, which loads only after the check.)"""
    no_model = tmp_path / "no-such-model"
    pairs, portraits = f"data.path={pair_dir}", f"data.path={portrait_dir}"
    return {
        "idenet": ["train", "idenet", *sets(pairs, f"model.pretrained={no_model}",
                                             "training.batch_size=8")],
        "ipnet": ["train", "ipnet", "--stage", "low", "--teacher", no_model,
                  *sets(pairs, "training.batch_size=8")],
        "ipnet-all": ["train", "ipnet", "--teacher", no_model, *sets(pairs)],  # Table 6: 8
        "fpga": ["train", "fpga", "--stage", "landmark",
                 *sets(portraits, "model.pretrained=tiny")],  # shipped batch 16
        "repcontrolnet": ["train", "repcontrolnet",
                          *sets(portraits, "model.pretrained=tiny")],  # shipped batch 8
    }  # fmt: skip


@pytest.mark.parametrize("trainer", ["idenet", "ipnet", "ipnet-all", "fpga", "repcontrolnet"])
def test_dataset_short_of_a_batch_is_one_line_before_any_model_and_writes_nothing(
    trainer, tmp_path, pair_dir, portrait_dir, capsys
):
    run = tmp_path / "run"
    args = [*short_of_a_batch(tmp_path, pair_dir, portrait_dir)[trainer],
            *sets(f"training.output_dir={run}", "training.mixed_precision=no")]  # fmt: skip
    code, out = run_cli(args, capsys)
    assert code == 2, out.err
    err = out.err.strip()
    assert len(err.splitlines()) == 1 and "no-such-model" not in err
    assert "4 examples, fewer than one batch" in err
    assert "--set training.batch_size=4" in err  # what to change
    assert not run.exists()  # no config.json left behind: the corrected rerun is not refused


def test_the_corrected_rerun_trains(pair_dir, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "idenet", *sets(
        "model.pretrained=tiny", f"data.path={pair_dir}", "data.resolution=64",
        "data.detect_faces=false", "loss.lambda_aid=0", f"training.output_dir={run}",
        "training.max_steps=1", "training.gradient_accumulation_steps=1",
        "training.tensorboard=false", "training.validate_every=0",
        "training.gradient_checkpointing=false",
    )]  # fmt: skip
    code, out = run_cli([*base, "--set", "training.batch_size=5"], capsys)
    assert code == 2 and "--set training.batch_size=4" in out.err and not run.exists()
    code, out = run_cli([*base, "--set", "training.batch_size=4"], capsys)
    assert code == 0, out.err
    assert (run / "final" / "model_index.json").is_file()
    # the CPU run chose fp32 and said so (the shipped setting is auto)
    assert "precision: fp32 (training.mixed_precision=auto" in out.out
    # metrics.csv rows end in a plain newline
    assert b"\r" not in (run / "metrics.csv").read_bytes()


def test_the_cli_counts_the_launched_processes(pair_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as accelerate launch --num_processes 2 sets it
    run = tmp_path / "run"
    args = ["train", "idenet", *sets(f"data.path={pair_dir}", "training.batch_size=3",
                                     f"training.output_dir={run}")]  # fmt: skip
    code, out = run_cli(args, capsys)
    assert code == 2 and "(training.batch_size=3 x 2 processes)" in out.err
    assert "--set training.batch_size=2" in out.err and not run.exists()


def test_check_batch_fits_counts_every_process():
    check_batch_fits(4, 2, processes=2)  # exactly one global batch
    with pytest.raises(InputError, match=r"3 examples.*batch_size=2 x 2 processes.*batch_size=1"):
        check_batch_fits(3, 2, processes=2)
    with pytest.raises(InputError, match="1 example, .*bigger dataset or fewer processes"):
        check_batch_fits(1, 1, processes=2)


# ---------------------------------------------------------------- --dry-run and inputs
@pytest.mark.parametrize(
    "argv, missing",
    [
        (["train", "idenet"], "data.path"),
        (["train", "ipnet", "--stage", "low"], "teacher.path"),
        (["train", "ipnet"], "teacher.path"),
        (["train", "fpga", "--stage", "all"], "data.path"),
        (["train", "repcontrolnet"], "data.path"),
    ],
)
def test_dry_run_prints_the_settings_without_the_inputs(argv, missing, capsys):
    code, out = run_cli([*argv, "--dry-run"], capsys)
    assert code == 0, out.err
    resolved = json.loads(out.out)
    first = resolved[0] if isinstance(resolved, list) else resolved
    assert first["training"]["mixed_precision"] == "auto"
    assert missing in out.err and "to train" in out.err  # a note, not a refusal


def test_training_still_demands_the_inputs(tmp_path, capsys):
    run = tmp_path / "run"
    code, out = run_cli(["train", "idenet", *sets(f"training.output_dir={run}")], capsys)
    assert code == 2 and "data.path: the pair dataset folder is required" in out.err
    assert not run.exists()


# ---------------------------------------------------------------- FPGA's stage_steps
def test_fpga_stage_steps_missing_a_stage_is_one_line(portrait_dir, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "fpga", "--stage", "both",
            *sets(f"data.path={portrait_dir}", f"training.output_dir={run}")]  # fmt: skip
    code, out = run_cli([*base, "--set", 'stage_steps={"landmark": 5}'], capsys)
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert "stage_steps: no steps for skeleton, both" in out.err
    assert "--set stage_steps.skeleton=N" in out.err and not run.exists()
    code, out = run_cli([*base, "--set", "stage_steps.bth=5"], capsys)
    assert code == 2 and "unknown stage 'bth'" in out.err
    code, out = run_cli([*base, "--set", "stage_steps.both=0", "--dry-run"], capsys)
    assert code == 2 and "stage_steps.both: a positive integer" in out.err
    # one stage set alone merges into the others
    code, out = run_cli([*base, "--set", "stage_steps.both=7", "--dry-run"], capsys)
    assert code == 0 and json.loads(out.out)["training"]["max_steps"] == 7


# ---------------------------------------------------------------- precision auto
def test_precision_auto_is_fp32_on_cpu_and_bf16_on_cuda_with_bf16(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu"))[0] == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    chosen, note = resolve_precision("auto", torch.device("cuda", 0))
    assert chosen == "bf16" and note.startswith("precision: bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda", 0))[0] == "no"  # e.g. a V100
    assert resolve_precision("fp16", torch.device("cuda", 0))[0] == "fp16"  # explicit wins


def test_auto_is_decided_for_the_launch_device_without_building_accelerate_state(monkeypatch):
    """Building accelerate's per-process state before the Accelerator broke `accelerate launch`
    (each process trained alone): the device is read from CUDA and ACCELERATE_USE_CPU."""
    from accelerate.state import PartialState

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    state = dict(PartialState._shared_state)
    assert run_settings.choose_precision("auto")[0] == "bf16"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert (
        run_settings.launch_device().type == "cpu"
        and run_settings.choose_precision("auto")[0] == "no"
    )
    assert run_settings.choose_precision("bf16") == ("bf16", None)  # explicit: as it is
    assert PartialState._shared_state == state  # nothing built


def test_explicit_precision_wins_on_cpu_with_a_warning_for_bf16():
    with pytest.warns(UserWarning, match="bf16 on the CPU"):
        assert resolve_precision("bf16", torch.device("cpu"))[0] == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("no", torch.device("cpu"))[0] == "no"
    with pytest.raises(InputError, match="fp16: needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("name", ["idenet", "ipnet", "fpga", "repcontrolnet"])
def test_shipped_configs_choose_precision_by_device(name):
    from instantportrait.cli.train import default_config

    assert default_config(name)["training"]["mixed_precision"] == "auto"


# ---------------------------------------------------------------- data-loading workers
def test_num_workers_capped_at_the_machine_and_said(monkeypatch):
    monkeypatch.setattr(run_settings, "_cpus", lambda: 2)
    workers, note = resolve_num_workers(4)
    assert workers == 1 and "training.num_workers=4" in note and "2 CPUs" in note
    assert resolve_num_workers(1) == (1, None)  # within the machine: as configured
    assert resolve_num_workers(None) == (1, None)  # from the machine: CPUs - 1
    assert resolve_num_workers(0) == (0, None)
    monkeypatch.setattr(run_settings, "_cpus", lambda: 16)
    assert resolve_num_workers(4) == (4, None)
    workers, note = resolve_num_workers(8, processes=4)  # 16 CPUs shared by 4 processes
    assert workers == 3 and "16 CPUs for 4 training process(es); using 3" in note


def test_fpga_ships_workers_from_the_machine():
    from instantportrait.cli.train import default_config

    assert default_config("fpga")["training"]["num_workers"] is None


# ---------------------------------------------------------------- metrics.csv line ends
def test_metrics_csv_rows_end_in_a_plain_newline(tmp_path):
    log = MetricsLogger(tmp_path, ["loss"], tensorboard=False)
    log.log(1, {"loss": 0.5})
    log.log(2, {"loss": 0.25})
    log.close()
    assert (tmp_path / "metrics.csv").read_bytes() == b"step,loss\n1,0.5\n2,0.25\n"
    # a resumed run rewrites the kept rows the same way
    MetricsLogger(tmp_path, ["loss"], resume_step=1, tensorboard=False).close()
    assert (tmp_path / "metrics.csv").read_bytes() == b"step,loss\n1,0.5\n"


@pytest.mark.parametrize("trainer", ["idenet", "ipnet", "faceanet", "fpga", "repcontrolnet"])
def test_preset_paper_is_offered_only_where_its_file_ships(trainer, capsys):
    """`--preset paper` where no configs/<trainer>_paper.json exists is an argparse error (one
    line, exit 2), never a crash on the missing file; where it ships, --dry-run reads it."""
    from pathlib import Path

    import instantportrait
    from instantportrait.cli import main

    shipped = (
        Path(instantportrait.__file__).parent / "configs" / f"{trainer}_paper.json"
    ).is_file()
    argv = ["train", trainer, "--preset", "paper", "--dry-run"] + (
        ["--set", "data.gender=woman", "--set", "data.images=[\"a.png\"]"] if trainer == "faceanet"
        else [])  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    err = capsys.readouterr().err
    if shipped:
        assert code == 0, err
    else:
        assert code == 2 and "invalid choice: 'paper'" in err and len(err.strip().splitlines()) == 1
