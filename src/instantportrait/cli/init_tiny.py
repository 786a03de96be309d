"""``instantportrait init-tiny``: write a tiny random-weight bundle of one model family."""

from __future__ import annotations

import argparse

from ..tiny import DEFAULT_KIND, TINY_KINDS


def register(sub: argparse._SubParsersAction) -> None:
    kinds = "; ".join(f"{k}: {desc}" for k, (_, desc) in TINY_KINDS.items())
    p = sub.add_parser(
        "init-tiny",
        help="write a tiny random-weight bundle (demos, tests, offline runs)",
        description="Write a tiny bundle with random weights that the toolkit loads through "
        "its real loading paths. Its outputs are noise: it exercises the code, not the model. "
        f"Kinds: {kinds}.",
    )
    p.add_argument("directory", help="the folder to write")
    p.add_argument(
        "--kind",
        default=DEFAULT_KIND,
        choices=list(TINY_KINDS),
        help=f"which model family (default {DEFAULT_KIND})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument(
        "--recommended-steps",
        type=int,
        default=1,
        help="(kind edit) steps `edit` uses by default: 1 acts as an IPNet (default), 20 an "
        "IDE-Net",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..tiny import write_tiny
    from ..writer import prepare_output
    from .common import quiet_libraries

    quiet_libraries()
    options = {}
    if args.kind == "edit":
        if args.recommended_steps < 1:
            raise InputError("--recommended-steps: must be at least 1")
        options["recommended_steps"] = args.recommended_steps
    prepare_output(args.directory, overwrite=args.overwrite, kind="dir")
    target = write_tiny(args.directory, args.kind, seed=args.seed, overwrite=True, **options)
    print(target)
    return 0
