"""``instantportrait train <trainer>``: every trainer on the shared accelerate loop.

The same command runs on a CPU, one GPU, or many GPUs/machines:
``accelerate launch [--num_processes N ...] -m instantportrait train idenet --config FILE``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

#: trainer name -> (module, config class, trainer class, shipped default config)
TRAINERS = {
    "idenet": ("instantportrait.training.idenet", "IDENetConfig", "IDENetTrainer", "idenet.json"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (IDE-Net, IPNet, ...) with accelerate")
    trainers = p.add_subparsers(dest="trainer", required=True)
    for name in TRAINERS:
        t = trainers.add_parser(name, help=f"train {name}")
        t.add_argument("--config", help=f"JSON or TOML config (default: the shipped {name} config)")
        t.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one setting, e.g. --set optim.lr=1e-5 (repeatable)",
        )
        t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
        t.add_argument(
            "--resume", help="latest (the run's newest checkpoint) or a checkpoint folder"
        )
        t.set_defaults(func=run)


def default_config(name: str) -> dict:
    path = Path(__file__).resolve().parent.parent / "configs" / TRAINERS[name][3]
    return json.loads(path.read_text())


def resolve(name: str, config: str | None, overrides: list[str]):
    """The trainer's typed config from defaults, file and overrides."""
    from ..training.config import load_config, to_dict

    module, cfg_name, _, _ = TRAINERS[name]
    cls = getattr(importlib.import_module(module), cfg_name)
    cfg = load_config(cls, config, overrides, base=default_config(name))
    return cfg, to_dict(cfg)


def run(args: argparse.Namespace) -> int:
    from .common import quiet_libraries

    cfg, resolved = resolve(args.trainer, args.config, args.set)
    if args.dry_run:
        print(json.dumps(resolved, indent=2))
        return 0
    quiet_libraries()
    module, _, trainer_name, _ = TRAINERS[args.trainer]
    trainer = getattr(importlib.import_module(module), trainer_name)(cfg)
    final = trainer.fit(resume=args.resume, resolved_config=resolved)
    if trainer.accelerator.is_main_process:
        print(final)
    return 0
