"""Helpers shared by the CLI commands: device/dtype resolution and seeded generators."""

from __future__ import annotations

import argparse

from ..devices import DTYPES, resolve_device, resolve_dtype, seeded_generator

__all__ = [
    "DTYPES",
    "add_device_arguments",
    "add_speed_arguments",
    "list_subcommands",
    "quiet_libraries",
    "resolve_device",
    "resolve_dtype",
    "seeded_generator",
]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N, mps or auto (default: cuda when available)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="float32, float16, bfloat16 or auto (default: float16 on CUDA, float32 elsewhere)",
    )


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--speed PRESET`` and ``--tiny-vae PATH`` (:mod:`instantportrait.speed`)."""
    from ..speed import PRESETS

    parser.add_argument(
        "--speed",
        default="none",
        metavar="PRESET",
        help=f"speed preset ({', '.join(PRESETS)}; default none) or features joined with '+' "
        "(e.g. fp16+channels-last); see `instantportrait bench --list`",
    )
    parser.add_argument(
        "--tiny-vae",
        default=None,
        metavar="PATH",
        help="AutoencoderTiny (TAESD) folder: decode with it (presets fast and max use it)",
    )


def list_subcommands(sub: argparse._SubParsersAction, name: str, lead: str) -> None:
    """Make the ``instantportrait --help`` line of command ``name`` say ``lead: a, b, ...``
    with its subcommands as registered (call it after registering them: it cannot lag)."""
    parser = sub.choices[name]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = f"{lead}: {', '.join(subs.choices)}"
    for action in sub._choices_actions:
        if action.dest == name:
            action.help = text


def quiet_libraries() -> None:
    """Silence diffusers'/transformers' own progress bars and info logs; ours stay."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
