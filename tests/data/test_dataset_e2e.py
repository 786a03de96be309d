"""The whole tiny path offline: prompts -> generate -> check -> a few IDE-Net steps."""

from __future__ import annotations

import csv
import json

from instantportrait.cli import main

TRAIN = [
    "train", "idenet",
    "--set", "model.pretrained=tiny",
    "--set", "data.resolution=64",
    "--set", "training.batch_size=2",
    "--set", "training.max_steps=2",
    "--set", "training.checkpoint_every=100",
    "--set", "training.validate_every=100",
    "--set", "training.tensorboard=false",
    "--set", "training.log_every=1",
    "--set", "training.mixed_precision=no",
    "--set", "training.gradient_checkpointing=false",
    "--set", "training.num_workers=0",
    "--set", "optim.warmup_steps=1",
]  # fmt: skip


def test_prompts_generate_check_train(tmp_path, tiny_bundle, capsys):
    prompts, data, run = tmp_path / "prompts.jsonl", tmp_path / "pairs", tmp_path / "run"
    assert main(["data", "prompts", "-o", str(prompts), "--num", "4", "--seed", "0"]) == 0
    code = main(
        ["data", "generate", "--prompts", str(prompts), "--models", str(tiny_bundle), "-o",
         str(data), "--resolution", "64x48", "--steps", "2", "--shard-size", "3", "--no-filter",
         "--quiet", "--device", "cpu", "--batch-size", "2"]  # default --memory in-turn
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "4 pairs in 2 shards" in out.out and "throughput" in out.out
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["pairs"] == 4 and manifest["settings"]["width"] == 64
    assert main(["data", "check", str(data)]) == 0
    assert "4 pairs, 4 good, 0 bad" in capsys.readouterr().out
    code = main([*TRAIN, "--set", f"data.path={data}", "--set", f"training.output_dir={run}"])
    assert code == 0, capsys.readouterr().err
    with open(run / "metrics.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("loss")]
    assert steps[-1] == 2
