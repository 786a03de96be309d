"""``--restore [--restore-model PATH]``: DIIR face restoration after any generating command.

A generating command calls :func:`add_restore_arguments` on its parser (or argument group) and
passes its outputs through :func:`maybe_restore` with the identity each output should have
(the edit's input portrait, the generation's ID image): every face smaller than
``--restore-below`` pixels is restored by DIIR (FPGA §4) and pasted back. Without
``--restore`` the images pass through untouched and nothing is loaded.

``--restore-codeformer PATH [--restore-codeformer-fidelity W]`` runs CodeFormer on the restored
crops before the paste-back (the paper's Table 4); ``restore`` has the same as ``--codeformer``
(:func:`add_codeformer_arguments`, :func:`build_codeformer`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "add_codeformer_arguments",
    "add_restore_arguments",
    "build_codeformer",
    "build_restorer",
    "check_codeformer_arguments",
    "check_restore_arguments",
    "maybe_restore",
    "restore_record",
]

#: what a DIIR model folder may be (``restore --model``, ``--restore-model``)
RESTORE_MODEL_HELP = (
    "an FPGA pipeline folder (train fpga's final/; its ID encoder is used) or a DIIR folder "
    "(SD1.5 + face-landmark ControlNet; init-tiny --kind restore makes a tiny one)"
)

#: the options that only mean something with ``--restore`` (dest -> default)
RESTORE_OPTIONS = {
    "restore_model": None,
    "restore_below": 100,
    "restore_steps": 30,
    "restore_face_parser": None,
    "restore_codeformer": None,
    "restore_codeformer_fidelity": 0.5,
}


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
        metavar="PATH",
        help=f"the model of --restore: {RESTORE_MODEL_HELP}",
    )
    parser.add_argument(
        "--restore-below",
        type=float,
        default=RESTORE_OPTIONS["restore_below"],
        help="restore faces whose box is smaller than this many pixels (default 100)",
    )
    parser.add_argument(
        "--restore-steps",
        type=int,
        default=RESTORE_OPTIONS["restore_steps"],
        help="DIIR DDIM steps (default 30)",
    )
    add_face_parser_argument(parser, prefix="restore-")
    add_codeformer_arguments(parser, prefix="restore-")


def check_restore_arguments(args: argparse.Namespace) -> None:
    """A ``--restore-*`` option given without ``--restore`` is one error line (not ignored)."""
    from ..errors import InputError

    if getattr(args, "restore", False):
        return
    for dest, default in RESTORE_OPTIONS.items():
        if getattr(args, dest, default) != default:
            flag = "--" + dest.replace("_", "-")
            raise InputError(f"{flag}: only used with --restore, which was not given")


def restore_record(args: argparse.Namespace) -> dict[str, Any] | None:
    """What ``--restore`` did, for the output records: ``{"settings": ..., "model": ...}``
    (``None`` without ``--restore``)."""
    if not getattr(args, "restore", False):
        return None
    fidelity = args.restore_codeformer_fidelity if args.restore_codeformer else None
    settings = {
        "restore_below": args.restore_below,
        "steps": args.restore_steps,
        "codeformer_fidelity": fidelity,
    }
    model = {
        "diir": args.restore_model,
        "face_parser": args.restore_face_parser,
        "codeformer": args.restore_codeformer,
    }
    return {"settings": settings, "model": {k: v for k, v in model.items() if v}}


def check_restore_models(args: argparse.Namespace) -> None:
    """The ``--restore-*`` models exist and fit, read from configs only (no weights)."""
    from ..errors import InputError
    from .common import check_model_options

    if getattr(args, "restore", False):
        if not args.restore_model:
            raise InputError("--restore: give the DIIR model with --restore-model PATH")
        check_model_options(
            args,
            ("--restore-model", "restore"),
            ("--restore-face-parser", "face-parser"),
            ("--restore-codeformer", "codeformer"),
        )


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
    from .common import quiet_libraries, resolve_device, resolve_dtype

    device = resolve_device(getattr(args, "device", "auto"))
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    check_codeformer_arguments(args, prefix="restore-")
    check_restore_models(args)
    extra = {}
    if getattr(args, "detector", None):
        from .detector_option import detector_config

        extra["detector"] = {"method": detector_config(args)}
    quiet_libraries()  # it loads before the command's own models: no diffusers logs or bars
    restorer = FaceRestorer.from_pretrained(
        args.restore_model,
        **extra,
        restore_below=args.restore_below,
        num_inference_steps=args.restore_steps,
        mask_fn=build_face_parser(args, prefix="restore-", device=device, dtype=dtype),
        enhancer=build_codeformer(args, prefix="restore-", device=device, dtype=dtype),
    )
    restorer.pipeline.to(device=device)
    if dtype != restorer.pipeline.unet.dtype:
        restorer.pipeline.to(dtype=dtype)
    restorer.pipeline.set_progress_bar_config(disable=True)  # the command shows its own bar
    if prompt:
        restorer.prompt = prompt
    args._restorer = restorer
    return restorer


def add_face_parser_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = ""
) -> None:
    """Add ``--{prefix}face-parser PATH``: DIIR's face mask M_B from a BiSeNet parse."""
    parser.add_argument(
        f"--{prefix}face-parser",
        default=None,
        metavar="PATH",
        help="BiSeNet face-parsing weights (79999_iter.pth, facexlib's parsing_bisenet.pth or "
        "a save_pretrained folder): DIIR's face mask from its parse, classes 1-13 (default: "
        "the landmark face mask)",
    )


def build_face_parser(args: argparse.Namespace, *, prefix: str = "", device=None, dtype=None):
    """The :class:`~..faces.parsing.FaceParser` of ``--{prefix}face-parser``, or ``None``."""
    path = getattr(args, f"{prefix}face_parser".replace("-", "_"), None)
    if not path:
        return None
    from ..faces.parsing import load_face_parser

    return load_face_parser(path, device, dtype)


# CodeFormer after DIIR (paper Table 4): `restore --codeformer`, `--restore-codeformer`
def _dest(prefix: str) -> str:
    return f"{prefix}codeformer".replace("-", "_")


def add_codeformer_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = ""
) -> None:
    """Add ``--{prefix}codeformer PATH`` and ``--{prefix}codeformer-fidelity W``."""
    parser.add_argument(
        f"--{prefix}codeformer",
        default=None,
        metavar="PATH",
        help="run CodeFormer on the DIIR-restored faces before pasting them back: the official "
        "codeformer.pth (github.com/sczhou/CodeFormer releases) or a save_pretrained folder",
    )
    parser.add_argument(
        f"--{prefix}codeformer-fidelity",
        type=float,
        default=0.5,
        metavar="W",
        help="CodeFormer's fidelity weight w in [0, 1]: 0 quality, 1 fidelity (default 0.5)",
    )


def check_codeformer_arguments(args: argparse.Namespace, prefix: str = "") -> None:
    """Reject a bad fidelity or a missing weights path early (one line naming the flag)."""
    from pathlib import Path

    from ..errors import ModelNotFoundError
    from ..restoration.codeformer import check_fidelity

    dest = _dest(prefix)
    check_fidelity(getattr(args, f"{dest}_fidelity", 0.5), f"--{prefix}codeformer-fidelity")
    path = getattr(args, dest, None)
    if path and not Path(path).expanduser().exists():
        raise ModelNotFoundError(
            f"--{prefix}codeformer: {path}: no such file or folder (download codeformer.pth "
            "from https://github.com/sczhou/CodeFormer/releases and give its path)"
        )


def build_codeformer(args: argparse.Namespace, *, prefix: str = "", device=None, dtype=None):
    """The :class:`~..restoration.codeformer.CodeFormerEnhancer` of ``args``, or ``None``."""
    dest = _dest(prefix)
    path = getattr(args, dest, None)
    if not path:
        return None
    from ..restoration.codeformer import load_codeformer_enhancer

    check_codeformer_arguments(args, prefix)
    fidelity = getattr(args, f"{dest}_fidelity", 0.5)
    return load_codeformer_enhancer(path, fidelity, device=device, dtype=dtype)


def maybe_restore(
    images: Sequence[Any],
    args: argparse.Namespace,
    id_images: Sequence[Any] | None = None,
    *,
    prompt: str | None = None,
    names: Sequence[str] | None = None,
) -> list[Any]:
    """``images`` with their small faces restored when ``--restore`` was given, else as they are.

    Args:
        images: the command's outputs (PIL images).
        args: the parsed arguments (``--restore``, ``--restore-model``, ...).
        id_images: the identity image of each output (or one for all); ``None``: each face's own.
        prompt: the generation's prompt, used as DIIR's prompt C.
        names: how each output is called in the restorer's notes (its file; default
            ``output i``).
    """
    if not getattr(args, "restore", False):
        return list(images)
    restorer = build_restorer(args, prompt=prompt)
    ids: list[Any] = (
        [None] * len(images)
        if id_images is None
        else list(id_images) * (len(images) if len(id_images) == 1 else 1)
    )
    labels = list(names) if names is not None else [f"output {i}" for i in range(len(images))]
    out = []
    for image, id_image, label in zip(images, ids, labels, strict=True):
        result = restorer.restore(image, id_image, prompt=prompt, name=label)
        for note in result.notes:
            print(note, file=sys.stderr)
        out.append(result.image)
    return out
