"""``train faceanet``'s convenience flags: each becomes a ``--set`` override of the config.

``--images a.jpg b.jpg c.jpg --gender woman --base PATH -o runs/alice`` tunes one person;
``--style`` is the 600-step preset of the paper (expression/accessory control, stylisation);
``--from runs/alice --images bob*.jpg --attribute nose`` continues the local task only for
100 steps (the attribute swap of Fig. 7). ``--set`` given explicitly wins over these flags.
"""

from __future__ import annotations

import argparse
import json

STYLE_STEPS = 600
#: the attribute swap's tuning steps (the paper: "about 100 steps" of the local task)
SWAP_STEPS = 100
#: the attributes of the local task (models.feat_embeddings.ATTRIBUTES; kept here so that the
#: CLI's start-up imports no model code)
ATTRIBUTES = ("left_eye", "right_eye", "nose", "mouth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("faceanet")
    g.add_argument("--images", nargs="+", help="about three photos of the person")
    g.add_argument("--gender", choices=["man", "woman"], help="the person's prompt noun (sets n)")
    g.add_argument("--base", help="SD-inpainting model folder or Hub id (G_id)")
    g.add_argument("-o", "--output", help="run folder (sets training.output_dir)")
    g.add_argument(
        "--steps", type=int, help=f"tuning steps (default 1000; {SWAP_STEPS} with --attribute)"
    )
    g.add_argument(
        "--style",
        action="store_true",
        help=f"{STYLE_STEPS} steps: the paper's preset for expression control and stylisation",
    )
    g.add_argument("--from", dest="from_identity", help="continue a tuned identity (run folder)")
    g.add_argument(
        "--attribute",
        choices=list(ATTRIBUTES),
        help="with --from: tune only this attribute's local task (left/right: the subject's); "
        f"{SWAP_STEPS} steps unless --steps",
    )
    g.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the UNet's activations in backward: less memory, about 30%% slower",
    )
    g.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 mixed precision (GPUs with bf16; on a CPU it is far slower than fp32)",
    )
    g.add_argument(
        "--allow-mixed-identities",
        action="store_true",
        help="tune even when the photos look like different people (refused by default)",
    )


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` strings of the convenience flags (placed before the user's own)."""
    from ..errors import InputError

    out: list[str] = []
    if args.images:
        out.append(f"data.images={json.dumps(list(args.images))}")
    if args.gender:
        out.append(f"data.gender={args.gender}")
    if args.base:
        out.append(f"model.base={args.base}")
    if args.output:
        out.append(f"training.output_dir={args.output}")
    if args.steps is not None and args.style:
        raise InputError("--steps / --style: give one of them")
    if args.style:
        out.append(f"training.max_steps={STYLE_STEPS}")
    if args.steps is not None:
        out.append(f"training.max_steps={args.steps}")
    if args.attribute and not args.from_identity:
        raise InputError("--attribute: needs --from (the identity to continue)")
    if args.from_identity:
        out.append(f"model.init_from={args.from_identity}")
        if args.attribute:
            out += ["tuning.tasks=local", f"tuning.attribute={args.attribute}"]
            if args.steps is None and not args.style:
                out.append(f"training.max_steps={SWAP_STEPS}")
    if args.gradient_checkpointing:
        out.append("training.gradient_checkpointing=true")
    if args.bf16:
        out.append("training.mixed_precision=bf16")
    if args.allow_mixed_identities:
        out.append("data.allow_mixed_identities=true")
    return out
