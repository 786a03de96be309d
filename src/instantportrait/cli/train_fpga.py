"""``instantportrait train fpga --stage landmark|skeleton|both|all``: FPGA's three stages.

One stage trains for its length of the spec (``stage_steps``: 50k / 100k / 1M) unless
``training.max_steps`` is set. ``all`` runs the three in ``OUTPUT/landmark``,
``OUTPUT/skeleton``, ``OUTPUT/both``, each starting from the previous stage's exported
pipeline (``model.pretrained``); with ``--resume`` a stage whose ``final`` exists is skipped;
the last stage's pipeline is copied to ``OUTPUT/final``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

STAGES = ("landmark", "skeleton", "both")


def add_stage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stage",
        default=None,
        choices=[*STAGES, "all"],
        help="landmark, skeleton, both (spec §2.3), or all three in order (default: the "
        "config's stage)",
    )


def _file_sets_max_steps(config: str | None) -> bool:
    if not config:
        return False
    from ..training.config import read_config_file

    return "max_steps" in read_config_file(config).get("training", {})


def run_fpga(args: argparse.Namespace) -> int:
    from ..writer import atomic_directory
    from .train import _train, precheck, print_dry_run, resolve

    user_steps = _file_sets_max_steps(args.config) or any(
        s.split("=", 1)[0].strip() == "training.max_steps" for s in args.set
    )
    base, _ = resolve("fpga", args.config, args.set)
    stages = STAGES if args.stage == "all" else ((args.stage or base.stage),)
    root = Path(base.training.output_dir)
    previous = None
    plan = []  # (stage, config, resolved), all resolved before any stage trains
    for stage in stages:
        first = [f"stage={stage}"]  # the user's --set may override these ...
        if not user_steps:
            first.append(f"training.max_steps={base.stage_steps[stage]}")
        last = []  # ... but not these: a chained stage lives in its own folder
        if len(stages) > 1:
            last.append(f"training.output_dir={root / stage}")
            if previous is not None:
                last.append(f"model.pretrained={previous}")
        cfg, resolved = resolve("fpga", args.config, [*first, *args.set, *last])
        plan.append((stage, cfg, resolved))
        previous = str(Path(cfg.training.output_dir) / "final")
    if args.dry_run:
        return print_dry_run([c for _, c, _ in plan], [r for _, _, r in plan])
    precheck("fpga", [c for _, c, _ in plan])
    for stage, cfg, resolved in plan:
        final = Path(cfg.training.output_dir) / "final"
        if len(stages) > 1 and args.resume and (final / "model_index.json").is_file():
            print(f"stage {stage}: done, skipped ({final})")
            continue
        _train("fpga", cfg, resolved, args.resume, args.overwrite)
    if len(stages) > 1:
        with atomic_directory(root / "final", overwrite=True) as tmp:
            shutil.copytree(previous, tmp, dirs_exist_ok=True)
        previous = str(root / "final")
    print(previous)
    return 0
