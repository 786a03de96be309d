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

from .common import list_subcommands

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
#: trainers that detect faces while training (``data.detector``; FPGA and RepControlNet read
#: the face crops of ``data portraits build --detector ...``)
DETECTING_TRAINERS = ("idenet", "ipnet", "faceanet")

#: trainer name -> its line in ``train --help`` (a trainer missing here shows "train NAME")
TRAINER_HELP = {
    "idenet": "IDE-Net (stage 1): InstructPix2Pix with the annealing identity loss",
    "ipnet": "IPNet (stage 2): the one-step student, by multi-objective distillation",
    "faceanet": "FaceA-Net: tune LoRA + [feat] embeddings on 1-3 photos of one person",
    "fpga": "FPGA: the ID-ControlNet (stages landmark, skeleton, both)",
    "repcontrolnet": "RepControlNet: trainable copies, merged into the base weights",
}
#: trainer name -> module of this package with its own flags (``add_arguments``, ``overrides``)
TRAINER_FLAGS = {"faceanet": "train_faceanet"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (IDE-Net, IPNet, ...) with accelerate")
    trainers = p.add_subparsers(dest="trainer", required=True)
    for name in TRAINERS:
        t = trainers.add_parser(
            name, help=TRAINER_HELP.get(name, f"train {name}"), description=TRAINER_HELP.get(name)
        )
        t.add_argument("--config", help=f"JSON or TOML config (default: the shipped {name} config)")
        t.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one setting, e.g. --set optim.lr=1e-5 (repeatable)",
        )
        presets = available_presets(name)
        t.add_argument(
            "--preset",
            default="default",
            choices=presets,
            help="default (small, one device)"
            + (" or paper (the paper's batch, steps, resolution)" if "paper" in presets else ""),
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
        if name in DETECTING_TRAINERS:
            from .detector_option import add_detector_arguments

            add_detector_arguments(t)  # sets data.detector
        if name in TRAINER_FLAGS:
            importlib.import_module(f"{__package__}.{TRAINER_FLAGS[name]}").add_arguments(t)
        if name == "fpga":
            from .train_fpga import add_stage_argument

            add_stage_argument(t)
        t.set_defaults(func=run)
    list_subcommands(sub, "train", "train a model with accelerate")


def available_presets(name: str) -> list[str]:
    """The presets a trainer ships (``default`` always; another only where its file exists),
    so ``--help`` never offers one that is missing."""
    folder = Path(__file__).resolve().parent.parent / "configs"
    return [p for p in PRESETS if p == "default" or (folder / f"{name}_{p}.json").is_file()]


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


def precheck(name: str, configs: list) -> None:
    """Before anything trains: each stage's models exist and fit, its inputs are given and its
    dataset fills one batch (every process's micro-batch), so that a later stage cannot fail
    after earlier ones ran."""
    import os

    from ..training.run_settings import check_batch_fits

    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    for cfg in configs:
        check_train_models(name, cfg)  # the models first: configs and headers, no weights
        trainer = trainer_class(name, cfg)
        check_inputs = getattr(cfg, "check_inputs", None)
        if check_inputs is not None:
            check_inputs()
        examples = trainer.count_examples(cfg)
        if examples is not None:
            check_batch_fits(examples, cfg.training.batch_size, processes)


def print_dry_run(configs: list, resolved: list[dict[str, Any]]) -> int:
    """``--dry-run``: the resolved settings (one stage: an object; several: a list), and a note
    on stderr for each input a real run would still need."""
    import sys

    from ..errors import InputError

    for cfg in configs:
        try:
            check = getattr(cfg, "check_inputs", None)
            if check is not None:
                check()
        except InputError as exc:
            print(f"note: {exc} to train (not for --dry-run)", file=sys.stderr)
            break
    print(json.dumps(resolved if len(resolved) > 1 else resolved[0], indent=2))
    return 0


#: trainer -> (setting, use) of each model it loads; ``None``: an FPGA folder or an SD1.5 base.
#: (idenet/ipnet: their loader, ``InstantPortraitPipeline.from_pretrained``, checks the layout
#: first and names the tiny settings.)
TRAIN_MODELS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "faceanet": (("model.base", "faceanet"),),
    "fpga": (("model.pretrained", None),),
    "repcontrolnet": (("model.pretrained", "fpga-base"), ("model.identity_encoder", "fpga")),
}


def check_train_models(name: str, cfg) -> None:
    """The models the trainer ``name`` loads exist and fit, read from configs and headers
    only, before the trainer reads any data or weights (one line naming the setting)."""
    from ..model_check import check_model, identify
    from ..model_sources import locate

    for setting, use in TRAIN_MODELS.get(name, ()):
        section, _, key = setting.partition(".")
        value = str(getattr(getattr(cfg, section), key, "") or "")
        if name == "faceanet" and not value and not cfg.model.init_from:
            from ..pipelines.faceanet_parts import DEFAULT_BASE

            value = DEFAULT_BASE
        if value in ("", "tiny", "random-real"):
            continue
        if use is None:  # train fpga: continue from an FPGA folder, or start from an SD1.5 base
            where = locate(value, setting)
            use = "fpga" if not isinstance(where, str) and identify(where).kind == "fpga" else None
            use = use or "fpga-base"
        check_model(value, use, "--base" if name == "faceanet" else setting)


def trainer_class(name: str, cfg) -> type:
    """The trainer of ``name`` for this config: the DiT trainers when the backbone is FLUX.1
    Kontext or Qwen-Image-Edit (IDE-Net: ``model.backbone=kontext`` or ``qwen-edit``; IPNet:
    a DiT IDE-Net export as the teacher, whose family it reads)."""
    if name == "idenet" and cfg.model.backbone in ("kontext", "qwen-edit"):
        from ..training.dit_idenet import DiTIDENetTrainer

        return DiTIDENetTrainer
    if name == "ipnet":
        from ..backbones import dit_family
        from ..training.dit_model import is_dit_training_export

        if is_dit_training_export(cfg.teacher.path):
            from ..training.dit_ipnet import DiTIPNetTrainer

            return DiTIPNetTrainer
        family = dit_family(cfg.teacher.path)
        if family is not None:
            from ..errors import InputError

            option = "kontext" if family == "FLUX.1 Kontext" else "qwen-edit"
            raise InputError(
                f"teacher.path={cfg.teacher.path}: a {family} folder, not an IDE-Net export; "
                f"train the teacher first (train idenet --set model.backbone={option})"
            )
    module, _, trainer_name, _ = TRAINERS[name]
    return getattr(importlib.import_module(module), trainer_name)


def _train(name: str, cfg, resolved, resume: str | None, overwrite: bool = False) -> Path:
    from .common import quiet_libraries

    quiet_libraries()
    trainer = trainer_class(name, cfg)(cfg)
    final = trainer.fit(resume=resume, resolved_config=resolved, overwrite=overwrite)
    return final if trainer.accelerator.is_main_process else None


def _detector_overrides(args: argparse.Namespace) -> list[str]:
    """``--detector``/``--detector-weights`` as ``data.detector=SPEC`` (before ``--set``)."""
    if getattr(args, "detector", None) is None and getattr(args, "detector_weights", None) is None:
        return []
    from .detector_option import detector_config

    return [f"data.detector={detector_config(args).spec}"]


def run(args: argparse.Namespace) -> int:
    if args.trainer == "fpga":
        from .train_fpga import run_fpga

        return run_fpga(args)
    if args.trainer != "ipnet":
        extra = []
        if args.trainer in TRAINER_FLAGS:
            flags = importlib.import_module(f"{__package__}.{TRAINER_FLAGS[args.trainer]}")
            extra = flags.overrides(args)
        extra = [*_detector_overrides(args), *extra]
        cfg, resolved = resolve(args.trainer, args.config, [*extra, *args.set], preset=args.preset)
        if args.dry_run:
            return print_dry_run([cfg], [resolved])
        precheck(args.trainer, [cfg])
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

    from ..training.ipnet import STAGE_ORDER
    from ..writer import atomic_directory

    stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
    sets = [*_detector_overrides(args), *args.set]
    first, _ = resolve("ipnet", args.config, sets, stages[0], args.teacher, args.preset)
    root = Path(first.training.output_dir)
    previous = first.student.init
    plan = []  # (stage, config, resolved), all resolved before any stage trains
    for stage in stages:
        extra = [f"training.output_dir={root / stage}"] if len(stages) > 1 else []
        if previous and len(stages) > 1:
            extra.append(f"student.init={previous}")
        cfg, resolved = resolve(
            "ipnet", args.config, [*sets, *extra], stage, args.teacher, args.preset
        )
        plan.append((stage, cfg, resolved))
        previous = str(Path(cfg.training.output_dir) / "final")
    if args.dry_run:
        return print_dry_run([c for _, c, _ in plan], [r for _, _, r in plan])
    precheck("ipnet", [c for _, c, _ in plan])
    for stage, cfg, resolved in plan:
        final = Path(cfg.training.output_dir) / "final"
        if len(stages) > 1 and args.resume and (final / "model_index.json").is_file():
            print(f"stage {stage}: done, skipped ({final})")
        else:
            _train("ipnet", cfg, resolved, args.resume, args.overwrite)
        previous = str(final)
    if len(stages) > 1:
        with atomic_directory(root / "final", overwrite=True) as tmp:
            shutil.copytree(previous, tmp, dirs_exist_ok=True)
        previous = str(root / "final")
    print(previous)
    return 0
