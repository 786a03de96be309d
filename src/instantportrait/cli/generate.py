"""``instantportrait generate --method METHOD``: the toolkit's one generation command.

Each method contributes a module of this package (``generate_<method>.py``) exposing

- ``add_arguments(group: argparse._ArgumentGroup) -> None``: its own options, in its own group;
- ``run(args: argparse.Namespace) -> int``: the work, with the shared options below in ``args``.

Shared options (every method): ``--prompt``/``--prompt-file``, ``--seed``,
``--num-images-per-prompt``, ``-o/--output``, ``--overwrite``/``--skip-existing``, ``--device``,
``--dtype``, and
the two that most methods take, each read by the method as it needs: ``--model`` (the
method's model; ``None`` when not given) and ``--id-image`` (repeatable; a list or ``None``).
A method that takes neither refuses them with one line.
An option that belongs to another method than the selected one is one clear error (exit 2).
``--restore [--restore-model PATH ...]`` is shared too: a method passes each output through
:func:`restored` before saving it, so DIIR repairs its small faces.
Every method writes its images and ``records.json`` (:mod:`instantportrait.records`) the
same way: :func:`plan_outputs` (the seed rule, what ``--skip-existing`` keeps; before any
model loads), :func:`open_output` (after the models load), ``records.add`` after each image.
Adding a method is one line in :data:`GENERATE_METHODS`; a module not present is skipped.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from .common import add_device_arguments

#: method name -> module of this package. The first present one is the default method.
GENERATE_METHODS: dict[str, str] = {
    "fastface": "generate_fastface",
    "faceanet": "generate_faceanet",
    "fpga": "generate_fpga",
}


def available_methods() -> dict[str, ModuleType]:
    """The methods whose module is present, in registry order."""
    found: dict[str, ModuleType] = {}
    for method, module_name in GENERATE_METHODS.items():
        full = f"{__package__}.{module_name}"
        try:
            found[method] = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name == full:
                continue
            raise
    return found


def register(sub: argparse._SubParsersAction) -> None:
    methods = available_methods()
    if not methods:
        return
    default = next(iter(methods))
    p = sub.add_parser(
        "generate",
        help=f"generate portraits of a given identity ({', '.join(methods)})",
        description="Generate identity-preserving portraits. --method picks the method; its "
        "own options are listed in its group below, and an option of another method is an "
        "error.",
    )
    p.add_argument("--method", default=default, choices=list(methods), help=f"default {default}")
    prompts = p.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", help="the prompt")
    prompts.add_argument("--prompt-file", help="a text file with one prompt a line")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")
    p.add_argument(
        "--num-images-per-prompt", type=int, default=1, help="images per prompt (default 1)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="the method's model: a folder or Hub id (FastFace also takes hyper, lightning, "
        "lcm, turbo; default hyper)",
    )
    p.add_argument(
        "--id-image",
        action="append",
        default=None,
        metavar="FACE",
        help="a face image of the identity (repeat for several people, FPGA)",
    )
    p.add_argument("-o", "--output", required=True, help="output folder (images and records.json)")
    done = p.add_mutually_exclusive_group()
    done.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    done.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep the outputs records.json says were made as asked and make the rest "
        "(continue an interrupted run)",
    )
    add_device_arguments(p)
    from .restore_option import add_restore_arguments

    add_restore_arguments(p.add_argument_group("face restoration (DIIR), every method"))
    from .detector_option import add_detector_arguments

    add_detector_arguments(p.add_argument_group("face detector, every method"))
    owners: dict[str, str] = {}
    for method, module in methods.items():
        group = p.add_argument_group(f"--method {method}")
        before = {a.dest for a in p._actions}
        module.add_arguments(group)
        for action in p._actions:
            if action.dest not in before:
                owners[action.dest] = method
    p.set_defaults(func=run, _generate_owners=owners, _generate_parser=p)


def check_method_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse an option given for another method than ``args.method`` (one line, exit 2)."""
    from ..errors import InputError
    from .common import typed_option

    for dest, method in args._generate_owners.items():
        if method == args.method:
            continue
        if getattr(args, dest, None) != parser.get_default(dest):
            action = next(a for a in parser._actions if a.dest == dest)
            flag = typed_option(args, action)
            raise InputError(f"{flag}: an option of --method {method}, not {args.method}")


def prompts_of(args: argparse.Namespace) -> list[str]:
    """The prompts of ``--prompt`` or ``--prompt-file``, checked by the input gate."""
    from ..errors import InputError
    from ..io import check_prompt, read_prompt_file

    if args.prompt_file:
        return read_prompt_file(args.prompt_file)
    if args.prompt is None:
        raise InputError("--prompt or --prompt-file: one is required")
    return [check_prompt(args.prompt, name="--prompt")]


def single_id_image(args: argparse.Namespace) -> str:
    """The one ``--id-image`` of a single-identity method (required, at most one)."""
    from ..errors import InputError

    if not args.id_image:
        raise InputError(f"--id-image: required for --method {args.method}")
    if len(args.id_image) > 1:
        raise InputError(
            f"--id-image: --method {args.method} takes one identity, got {len(args.id_image)}"
        )
    return args.id_image[0]


def refuse_shared(args: argparse.Namespace, *names: str, hint: str = "") -> None:
    """Refuse shared options (``model``, ``id_image``) a method does not take."""
    from ..errors import InputError

    for name in names:
        if getattr(args, name, None):
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag}: not an option of --method {args.method}{hint}")


def restored(
    image,
    args: argparse.Namespace,
    id_image=None,
    prompt: str | None = None,
    name: str | None = None,
):
    """``image`` with its small faces restored by DIIR when ``--restore`` was given.

    ``id_image``: the identity the faces should have (FastFace's ``--id-image``); ``None``
    restores each face towards itself (several people, or a tuned identity). ``name``: the
    output's file, as the restorer's notes call it.
    """
    from .restore_option import maybe_restore

    ids = None if id_image is None else [id_image]
    names = None if name is None else [name]
    return maybe_restore([image], args, ids, prompt=prompt, names=names)[0]


def plan_outputs(args: argparse.Namespace, prompts: list[str], name, *, settings, models):
    """The images still to make and the records they go into, before any model loads.

    ``name(planned) -> str``: the output file of a :class:`~..records.PlannedImage`.
    ``settings``/``models``: the method's options by value and its model sources; the
    ``--restore`` settings are added here. With ``--skip-existing`` the outputs that
    ``records.json`` says were made as asked are left out (and said on stderr); otherwise
    the records start empty (``--overwrite`` replaces the folder).
    Returns ``(records, [(planned, file name), ...])``.
    """
    import sys

    from ..records import OutputRecords, plan_images
    from ..writer import check_output
    from .restore_option import restore_record

    check_output(args.output, overwrite=args.overwrite or args.skip_existing)
    restore = restore_record(args)
    records = OutputRecords(
        args.output,
        command="generate",
        method=args.method,
        settings=dict(settings) | ({"restore": restore["settings"]} if restore else {}),
        models=dict(models) | ({"restore": restore["model"]} if restore else {}),
        fresh=not args.skip_existing,  # --overwrite: the old folder goes, records and all
    )
    todo = []
    for planned in plan_images(prompts, args.num_images_per_prompt, args.seed):
        file = name(planned)
        done = args.skip_existing and records.is_done(
            file, prompt=planned.prompt, seed=planned.seed
        )
        if not done:
            todo.append((planned, file))
    skipped = len(prompts) * args.num_images_per_prompt - len(todo)
    if skipped:
        print(f"skipping {skipped} existing output(s) (--skip-existing)", file=sys.stderr)
    return records, todo


def open_output(args: argparse.Namespace, records) -> None:
    """Make the output folder once the models have loaded: with ``--overwrite`` an old one
    is replaced only now; with ``--skip-existing`` it is kept."""
    from ..writer import check_output_path, prepare_output

    if args.skip_existing:
        check_output_path(args.output, kind="dir").mkdir(parents=True, exist_ok=True)
    else:
        prepare_output(args.output, overwrite=args.overwrite, kind="dir", create=True)
    records.folder.mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from .restore_option import build_restorer, check_restore_arguments

    check_method_options(args, args._generate_parser)
    check_restore_arguments(args)
    if args.num_images_per_prompt < 1:
        raise InputError(
            f"--num-images-per-prompt: must be at least 1, got {args.num_images_per_prompt}"
        )
    module = available_methods()[args.method]
    if hasattr(module, "check_models"):
        module.check_models(args)  # configs and headers only: a wrong model is one line first
    if args.restore:
        build_restorer(args)  # a missing or bad --restore-model fails before generating
    return int(module.run(args) or 0)
