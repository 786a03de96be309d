"""The one entry point: ``instantportrait <command>``.

Each command lives in its own module of this package exposing ``register(subparsers)``,
which adds a sub-parser whose ``func(args) -> int`` does the work. Modules import their
heavy dependencies inside ``func`` so ``instantportrait --help`` stays fast.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr, no traceback);
1 an internal error (one line; ``INSTANTPORTRAIT_DEBUG=1`` prints the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from ..errors import INTERNAL_EXIT_CODE, USAGE_EXIT_CODE, InstantPortraitError, first_line

# Command modules, in the order `--help` lists them. A module not present is skipped.
COMMAND_MODULES = (
    "edit",
    "edit_video",
    "generate",
    "restore",
    "init_tiny",
    "faces",
    "data",
    "train",
    "evaluate",
    "metric_env",
    "bench",
    "app",
    "models",
    "env",
)


class TypedFloat(float):
    """A float option's value that prints as the user typed it: ``--fps 0`` is said back as
    ``got 0``, not ``got 0.0`` (it computes and serialises as the float it is)."""

    text: str

    def __new__(cls, text: str) -> TypedFloat:
        value = super().__new__(cls, text)
        value.text = str(text).strip()
        return value

    def __str__(self) -> str:
        return self.text


def _typed_float(text: str) -> float:
    return TypedFloat(text)


_typed_float.__name__ = "float"  # argparse names the type in "invalid float value: 'x'"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2, and a ``float``
    option keeps the text typed (:class:`TypedFloat`) for messages that say it back."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register("type", float, _typed_float)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="instantportrait",
        description="Identity-preserving portrait editing with diffusion models.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"instantportrait {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the process exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    # what was typed, so messages name an option as the user wrote it (common.typed_option)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings()
        return _run(args)


def _one_line_warnings():
    """A ``warnings.showwarning`` that prints ``warning: <message>`` once per message: no
    file name, no source line, no repeats (a user reads the message, not our code)."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        text = " ".join(str(message).split())
        if text in seen:
            return
        seen.add(text)
        from tqdm.auto import tqdm

        # tqdm.write keeps an active progress bar intact (the line goes above it).
        tqdm.write(f"warning: {text}", file=sys.stderr if file is None else file)

    return show


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except InstantPortraitError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, always
        return USAGE_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if os.environ.get("INSTANTPORTRAIT_DEBUG"):
            traceback.print_exc()
        first = first_line(exc, 300) if str(exc).strip() else ""
        print(
            f"internal error: {type(exc).__name__}: {first} "
            "(set INSTANTPORTRAIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return INTERNAL_EXIT_CODE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
