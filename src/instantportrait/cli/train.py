"""``instantportrait train <trainer>``: every trainer on the shared accelerate loop.

The same command runs on a CPU, one GPU, or many GPUs/machines:
``accelerate launch [--num_processes N ...] -m instantportrait train idenet --config FILE``.
Settings resolve in this order: the shipped defaults, the ``--preset`` (``paper``: the
paper's settings), (IPNet) the stage preset of Table 6, the ``--config`` file, then each
``--set KEY=VALUE``.

The run folder (``training.output_dir``) follows the one writer policy: a used folder is
refused unless ``--resume`` (continue it) or ``--overwrite`` (replace it) is given, and
nothing is written into it before set-up has succeeded.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

#: presets beside the shipped defaults: name -> file suffix (``configs/<trainer>_<suffix>.json``)
PRESETS = ("default", "paper")

#: trainer name -> (module, config class, trainer class, shipped default config)
TRAINERS = {
    "idenet": ("instantportrait.training.idenet", "IDENetConfig", "IDENetTrainer", "idenet.json"),
    "ipnet": ("instantportrait.training.ipnet", "IPNetConfig", "IPNetTrainer", "ipnet.json"),
    "faceanet": (
        "instantportrait.training.faceanet",
        "FaceANetConfig",
        "FaceANetTrainer",
        "faceanet.json",
    ),
    "fpga": ("instantportrait.training.fpga", "FPGAConfig", "FPGATrainer", "fpga.json"),
    "repcontrolnet": (
        "instantportrait.training.repcontrolnet",
        "RepControlNetConfig",
        "RepControlNetTrainer",
        "repcontrolnet.json",
    ),
}
#: trainer name -> module of this package with its own flags (``add_arguments``, ``overrides``)
TRAINER_FLAGS = {"faceanet": "train_faceanet"}


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
        t.add_argument(
            "--preset",
            default="default",
            choices=PRESETS,
            help="default (small, one device) or paper (the paper's batch, steps, resolution)",
        )
        t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
        resume = t.add_mutually_exclusive_group()
        resume.add_argument(
            "--resume",
            help="latest (the run's newest checkpoint; starts fresh if there is none) or a "
            "checkpoint folder",
        )
        resume.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a used run folder (removed once set-up has succeeded)",
        )
        if name == "ipnet":
            t.add_argument("--teacher", help="the IDE-Net teacher pipeline (sets teacher.path)")
            t.add_argument(
                "--stage",
                default="all",
                choices=["high", "middle", "low", "all"],
                help="a stage of Table 6, or all three in order (default all)",
            )
        if name in TRAINER_FLAGS:
            importlib.import_module(f"{__package__}.{TRAINER_FLAGS[name]}").add_arguments(t)
        if name == "fpga":
            from .train_fpga import add_stage_argument

            add_stage_argument(t)
        t.set_defaults(func=run)


def default_config(name: str, preset: str = "default") -> dict[str, Any]:
    """The shipped config of a trainer, with a preset merged over it."""
    from ..training.config import merge

    folder = Path(__file__).resolve().parent.parent / "configs"
    base = json.loads((folder / TRAINERS[name][3]).read_text())
    if preset != "default":
        extra = json.loads((folder / f"{name}_{preset}.json").read_text())
        base = merge(base, {k: v for k, v in extra.items() if not k.startswith("_")})
    return base


def resolve(
    name: str,
    config: str | None,
    overrides: list[str],
    stage: str | None = None,
    teacher: str | None = None,
    preset: str = "default",
):
    """The trainer's typed config from defaults, preset, stage preset, file and overrides."""
    from ..training.config import load_config, merge, to_dict

    module, cfg_name, _, _ = TRAINERS[name]
    cls = getattr(importlib.import_module(module), cfg_name)
    base = default_config(name, preset)
    if stage is not None:
        from ..training.ipnet import STAGES

        base = merge(base, STAGES[stage])
    extra = [f"teacher.path={teacher}"] if teacher else []
    cfg = load_config(cls, config, [*extra, *overrides], base=base)
    return cfg, to_dict(cfg)


def trainer_class(name: str, cfg) -> type:
    """The trainer of ``name`` for this config: the Kontext trainers when the backbone is
    FLUX.1 Kontext (IDE-Net: ``model.backbone=kontext``; IPNet: a Kontext IDE-Net teacher)."""
    if name == "idenet" and cfg.model.backbone == "kontext":
        from ..training.kontext_idenet import KontextIDENetTrainer

        return KontextIDENetTrainer
    if name == "ipnet":
        from ..backbones import is_kontext_folder
        from ..training.kontext_model import is_kontext_training_export

        if is_kontext_training_export(cfg.teacher.path):
            from ..training.kontext_ipnet import KontextIPNetTrainer

            return KontextIPNetTrainer
        if is_kontext_folder(cfg.teacher.path):
            from ..errors import InputError

            raise InputError(
                f"teacher.path={cfg.teacher.path}: a FLUX.1 Kontext folder, not an IDE-Net "
                "export; train the teacher first (train idenet --set model.backbone=kontext)"
            )
    module, _, trainer_name, _ = TRAINERS[name]
    return getattr(importlib.import_module(module), trainer_name)


def _train(name: str, cfg, resolved, resume: str | None, overwrite: bool = False) -> Path:
    from .common import quiet_libraries

    quiet_libraries()
    trainer = trainer_class(name, cfg)(cfg)
    final = trainer.fit(resume=resume, resolved_config=resolved, overwrite=overwrite)
    return final if trainer.accelerator.is_main_process else None


def run(args: argparse.Namespace) -> int:
    if args.trainer == "fpga":
        from .train_fpga import run_fpga

        return run_fpga(args)
    if args.trainer != "ipnet":
        extra = []
        if args.trainer in TRAINER_FLAGS:
            flags = importlib.import_module(f"{__package__}.{TRAINER_FLAGS[args.trainer]}")
            extra = flags.overrides(args)
        cfg, resolved = resolve(args.trainer, args.config, [*extra, *args.set], preset=args.preset)
        if args.dry_run:
            print(json.dumps(resolved, indent=2))
            return 0
        final = _train(args.trainer, cfg, resolved, args.resume, args.overwrite)
        if final is not None:
            print(final)
        return 0
    return run_ipnet(args)


def run_ipnet(args: argparse.Namespace) -> int:
    """One stage, or ``all``: high -> middle -> low, each starting from the previous student.

    With ``all`` the stages run in ``OUTPUT/high``, ``OUTPUT/middle``, ``OUTPUT/low``; a stage
    whose ``final`` exists is skipped on ``--resume``, and the last stage's student is copied
    to ``OUTPUT/final``.
    """
    import shutil

    from ..io import atomic_directory
    from ..training.ipnet import STAGE_ORDER

    stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
    first, _ = resolve("ipnet", args.config, args.set, stages[0], args.teacher, args.preset)
    root = Path(first.training.output_dir)
    previous = first.student.init
    resolved_all = []
    for stage in stages:
        extra = [f"training.output_dir={root / stage}"] if len(stages) > 1 else []
        if previous and len(stages) > 1:
            extra.append(f"student.init={previous}")
        cfg, resolved = resolve(
            "ipnet", args.config, [*args.set, *extra], stage, args.teacher, args.preset
        )
        resolved_all.append(resolved)
        if args.dry_run:
            continue
        final = Path(cfg.training.output_dir) / "final"
        if len(stages) > 1 and args.resume and (final / "model_index.json").is_file():
            print(f"stage {stage}: done, skipped ({final})")
        else:
            _train("ipnet", cfg, resolved, args.resume, args.overwrite)
        previous = str(final)
    if args.dry_run:
        print(json.dumps(resolved_all if len(stages) > 1 else resolved_all[0], indent=2))
        return 0
    if len(stages) > 1:
        with atomic_directory(root / "final", overwrite=True) as tmp:
            shutil.copytree(previous, tmp, dirs_exist_ok=True)
        previous = str(root / "final")
    print(previous)
    return 0
