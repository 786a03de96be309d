"""The project's error types and the lazy import of optional dependencies.

Every error a user can cause carries one line that names the input and says what is wrong;
the CLI prints that line alone and exits with code 2 (:data:`USAGE_EXIT_CODE`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

USAGE_EXIT_CODE = 2
INTERNAL_EXIT_CODE = 1


class InstantPortraitError(Exception):
    """Base class: an error whose message is one line meant for the user."""


class InputError(InstantPortraitError, ValueError):
    """Untrusted input (an image, a prompt, a config, a checkpoint) was rejected."""


class ModelNotFoundError(InstantPortraitError, OSError):
    """A model folder or Hub id could not be loaded; the message says how to provide it."""


class MissingDependencyError(InstantPortraitError, ImportError):
    """An optional dependency is absent; the message names the extra to install."""


def shorten_line(text: str, limit: int = 200) -> str:
    """``text`` on one line of at most ``limit`` characters, cut between words (``...`` marks
    the cut), so a quoted message never ends mid-word."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 3]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:.") + "..."


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when empty), shortened by
    :func:`shorten_line`: how a foreign error is quoted inside our one-line messages."""
    text = str(exc).strip()
    return shorten_line(text.splitlines()[0] if text else type(exc).__name__, limit)


def optional_import(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        what = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"optional dependency '{module}' is not installed{what}: "
            f"pip install 'instantportrait[{extra}]'"
        ) from exc
