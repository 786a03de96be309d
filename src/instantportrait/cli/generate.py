"""``instantportrait generate --method METHOD``: the toolkit's one generation command.

Each method contributes a module of this package (``generate_<method>.py``) exposing

- ``add_arguments(group: argparse._ArgumentGroup) -> None``: its own options, in its own group;
- ``run(args: argparse.Namespace) -> int``: the work, with the shared options below in ``args``.

Shared options (every method): ``--prompt``/``--prompt-file``, ``--seed``,
``--num-images-per-prompt``, ``-o/--output``, ``--overwrite``, ``--device``, ``--dtype``, and
the two that most methods take, each read by the method as it needs: ``--model`` (the
method's model; ``None`` when not given) and ``--id-image`` (repeatable; a list or ``None``).
A method that takes neither refuses them with one line.
An option that belongs to another method than the selected one is one clear error (exit 2).
``--restore [--restore-model PATH ...]`` is shared too: a method passes each output through
:func:`restored` before saving it, so DIIR repairs its small faces.
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
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_device_arguments(p)
    from .restore_option import add_restore_arguments

    add_restore_arguments(p.add_argument_group("face restoration (DIIR), every method"))
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

    for dest, method in args._generate_owners.items():
        if method == args.method:
            continue
        if getattr(args, dest, None) != parser.get_default(dest):
            flag = next((a.option_strings[-1] for a in parser._actions if a.dest == dest), dest)
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


def restored(image, args: argparse.Namespace, id_image=None, prompt: str | None = None):
    """``image`` with its small faces restored by DIIR when ``--restore`` was given.

    ``id_image``: the identity the faces should have (FastFace's ``--id-image``); ``None``
    restores each face towards itself (several people, or a tuned identity).
    """
    from .restore_option import maybe_restore

    return maybe_restore([image], args, None if id_image is None else [id_image], prompt=prompt)[0]


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    check_method_options(args, args._generate_parser)
    if args.num_images_per_prompt < 1:
        raise InputError("--num-images-per-prompt: must be at least 1")
    module = available_methods()[args.method]
    if hasattr(module, "check_models"):
        module.check_models(args)  # configs and headers only: a wrong model is one line first
    if args.restore:
        from .restore_option import build_restorer

        build_restorer(args)  # a missing or bad --restore-model fails before generating
    return int(module.run(args) or 0)
