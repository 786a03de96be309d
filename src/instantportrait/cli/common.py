"""Helpers shared by the CLI commands: device/dtype resolution and seeded generators."""

from __future__ import annotations

import argparse

from ..devices import DTYPES, resolve_device, resolve_dtype, seeded_generator

__all__ = [
    "DTYPES",
    "add_device_arguments",
    "add_speed_arguments",
    "list_subcommands",
    "typed_option",
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


def typed_option(args: argparse.Namespace, action: argparse.Action) -> str:
    """The option string of ``action`` as the user typed it (an alias, ``--opt=value``, or an
    abbreviation argparse accepted); its first option string when it was not typed."""
    argv = [str(t).split("=", 1)[0] for t in getattr(args, "_argv", []) if str(t).startswith("-")]
    for name in argv:
        if name in action.option_strings:
            return name
    for name in argv:
        if name.startswith("--") and any(o.startswith(name) for o in action.option_strings):
            return name
    return action.option_strings[0] if action.option_strings else action.dest


def quiet_libraries() -> None:
    """Silence diffusers'/transformers' own progress bars and info logs; ours stay."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


#: values of a model option that name no folder or file (built-in test models, families).
_NOT_PATHS = ("tiny", "random-real", "hyper", "lightning", "lcm", "turbo")


def check_model_options(args: argparse.Namespace, *options: tuple[str, str]) -> None:
    """Check the models named by ``options`` (``(flag, use)``, e.g. ``("--model", "edit")``)
    before any computation: each given one exists (a folder, file or Hub id) and its layout
    fits ``use``, read from configs and tensor headers only
    (:func:`~instantportrait.model_check.check_model`). A bad one is one line naming the flag.
    """
    from ..model_check import check_model

    for flag, use in options:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is None or str(value) in _NOT_PATHS:
            continue
        check_model(str(value), use, flag)
