"""``instantportrait init-tiny``: write a tiny random-weight checkpoint (demos and tests)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init-tiny",
        help="write a tiny random-weight pipeline folder",
        description="Write a tiny InstantPortrait pipeline with random weights that `edit "
        "--model DIR` loads. Its outputs are noise: it exercises the code, not the model.",
    )
    p.add_argument("directory", help="the folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument(
        "--recommended-steps",
        type=int,
        default=1,
        help="steps `edit` uses by default: 1 acts as an IPNet (default), 20 an IDE-Net",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..components import build_components
    from ..errors import InputError
    from ..pipelines import InstantPortraitPipeline
    from .common import quiet_libraries

    quiet_libraries()
    target = Path(args.directory)
    if target.exists() and not args.overwrite:
        raise InputError(f"{target}: already exists (pass --overwrite to replace it)")
    if args.recommended_steps < 1:
        raise InputError("--recommended-steps: must be at least 1")
    guidance = 1.0 if args.recommended_steps == 1 else None
    extra = (
        {}
        if guidance is None
        else {"default_guidance_scale": 1.0, "default_image_guidance_scale": 1.0}
    )
    pipe = InstantPortraitPipeline(
        **build_components("tiny", seed=args.seed),
        recommended_steps=args.recommended_steps,
        **extra,
    )
    pipe.save_pretrained(target)
    print(target)
    return 0
