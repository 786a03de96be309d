"""``--restore [--restore-model PATH]``: DIIR face restoration after any generating command.

A generating command calls :func:`add_restore_arguments` on its parser (or argument group) and
passes its outputs through :func:`maybe_restore` with the identity each output should have
(the edit's input portrait, the generation's ID image): every face smaller than
``--restore-below`` pixels is restored by DIIR (FPGA §4) and pasted back. Without
``--restore`` the images pass through untouched and nothing is loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_restore_arguments", "build_restorer", "maybe_restore"]


def add_restore_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--restore``, ``--restore-model``, ``--restore-below``, ``--restore-steps``,
    ``--restore-face-parser``."""
    parser.add_argument(
        "--restore",
        action="store_true",
        help="restore small faces of every output with DIIR (FPGA), pasting them back",
    )
    parser.add_argument(
        "--restore-model",
        default=None,
        help="DIIR model folder (SD1.5 + landmark ControlNet; init-tiny --kind restore)",
    )
    parser.add_argument(
        "--restore-below",
        type=float,
        default=100,
        help="restore faces whose box is smaller than this many pixels (default 100)",
    )
    parser.add_argument(
        "--restore-steps", type=int, default=30, help="DIIR DDIM steps (default 30)"
    )
    # --- face parser (BiSeNet M_B) ---
    parser.add_argument(
        "--restore-face-parser",
        default=None,
        metavar="PATH",
        help="BiSeNet face-parsing weights for DIIR's face mask (default: landmark mask)",
    )
    # --- end face parser ---


def build_restorer(args: argparse.Namespace, *, prompt: str | None = None):
    """The :class:`~..restoration.restorer.FaceRestorer` of ``args`` (loaded once, cached)."""
    from ..errors import InputError

    cached = getattr(args, "_restorer", None)
    if cached is not None:
        return cached
    if not args.restore_model:
        raise InputError("--restore: give the DIIR model with --restore-model PATH")
    if args.restore_steps < 1:
        raise InputError(f"--restore-steps: must be at least 1, got {args.restore_steps}")
    if args.restore_below <= 0:
        raise InputError(f"--restore-below: must be positive, got {args.restore_below}")
    from ..restoration.restorer import FaceRestorer
    from .common import resolve_device, resolve_dtype

    device = resolve_device(getattr(args, "device", "auto"))
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    restorer = FaceRestorer.from_pretrained(
        args.restore_model,
        restore_below=args.restore_below,
        num_inference_steps=args.restore_steps,
        mask_fn=_face_parser(args, device, dtype),  # --restore-face-parser
    )
    restorer.pipeline.to(device=device)
    if dtype != restorer.pipeline.unet.dtype:
        restorer.pipeline.to(dtype=dtype)
    if prompt:
        restorer.prompt = prompt
    args._restorer = restorer
    return restorer


# --- face parser (BiSeNet M_B) ---
def _face_parser(args: argparse.Namespace, device: Any, dtype: Any):
    """The :class:`~..faces.parsing.FaceParser` of ``--restore-face-parser``, else ``None``."""
    path = getattr(args, "restore_face_parser", None)
    if not path:
        return None
    from ..faces.parsing import load_face_parser

    return load_face_parser(path, device, dtype)


# --- end face parser ---


def maybe_restore(
    images: Sequence[Any],
    args: argparse.Namespace,
    id_images: Sequence[Any] | None = None,
    *,
    prompt: str | None = None,
) -> list[Any]:
    """``images`` with their small faces restored when ``--restore`` was given, else as they are.

    Args:
        images: the command's outputs (PIL images).
        args: the parsed arguments (``--restore``, ``--restore-model``, ...).
        id_images: the identity image of each output (or one for all); ``None``: each face's own.
        prompt: the generation's prompt, used as DIIR's prompt C.
    """
    if not getattr(args, "restore", False):
        return list(images)
    restorer = build_restorer(args, prompt=prompt)
    ids: list[Any] = (
        [None] * len(images)
        if id_images is None
        else list(id_images) * (len(images) if len(id_images) == 1 else 1)
    )
    out = []
    for i, (image, id_image) in enumerate(zip(images, ids)):
        result = restorer.restore(image, id_image, prompt=prompt, name=f"output {i}")
        for note in result.notes:
            print(note, file=sys.stderr)
        out.append(result.image)
    return out
