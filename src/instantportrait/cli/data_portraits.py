"""``instantportrait data build-portraits SRC OUT`` and ``data pack-portraits``: FPGA's
portrait dataset (:mod:`instantportrait.data.portrait_builder` builds it,
:mod:`instantportrait.data.portraits` packs it)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any


def register_portraits(cmds: argparse._SubParsersAction) -> None:
    """Add the portrait subcommands to ``data``'s subparsers."""
    b = cmds.add_parser(
        "build-portraits",
        help="build FPGA's portrait dataset (six modalities) from a folder of photos",
        description="Detect the face, 68 landmarks, aligned face crop and face mask of every "
        "photo; read keypoints and captions from sidecar files (or user-provided functions). "
        "Photos that fail a filter are counted by reason and listed in rejected.jsonl.",
    )
    b.add_argument("source", help="folder of photos (NAME.txt captions, NAME.json keypoints)")
    b.add_argument("output", help="the dataset folder to create")
    b.add_argument("--min-side", type=int, default=512, help="shortest image side (default 512)")
    b.add_argument("--min-face", type=int, default=64, help="smallest face box side (default 64)")
    b.add_argument(
        "--min-sharpness", type=float, default=0.0, help="Laplacian variance floor (default off)"
    )
    b.add_argument(
        "--allow-multiple-faces", action="store_true", help="keep photos with several faces"
    )
    b.add_argument(
        "--face-template",
        default="arcface",
        help="alignment template of the face crops, the face embedder's: dlib, arcface, "
        "facenet or ffhq (default arcface)",
    )
    b.add_argument("--keypoints-dir", help="folder of STEM.json OpenPose/COCO keypoint files")
    from .detector_option import add_detector_arguments

    add_detector_arguments(b)
    b.add_argument(
        "--pose-fn", metavar="MODULE:FUNCTION", help="your pose estimator: PIL image -> (N, 18, 3)"
    )
    b.add_argument(
        "--captioner", metavar="MODULE:FUNCTION", help="your captioner: PIL image -> str"
    )
    b.add_argument("--default-caption", help="caption for photos without one")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    b.set_defaults(func=run_build)
    p = cmds.add_parser("pack-portraits", help="write a portrait dataset as tar shards")
    p.add_argument("source", help="a portrait dataset folder")
    p.add_argument("output", help="the folder for shard-NNNNNN.tar files")
    p.add_argument("--shard-size", type=int, default=1000, help="rows per shard (default 1000)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the output folder and its shards"
    )
    p.set_defaults(func=run_pack)


def import_function(spec: str, flag: str) -> Callable[..., Any]:
    """``module:function`` to the function; one clear line when it cannot be found."""
    from ..errors import InputError

    module, _, name = spec.partition(":")
    if not module or not name:
        raise InputError(f"{flag} {spec!r}: expected MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{flag} {spec!r}: cannot import ({exc})") from None
    if not callable(fn):
        raise InputError(f"{flag} {spec!r}: not callable")
    return fn


def run_build(args: argparse.Namespace) -> int:
    from ..data.portrait_builder import build_portraits, check_face_template
    from ..writer import prepare_output
    from .detector_option import detector_config

    check_face_template(args.face_template)
    detector = detector_config(args)
    pose = import_function(args.pose_fn, "--pose-fn") if args.pose_fn else None
    captioner = import_function(args.captioner, "--captioner") if args.captioner else None
    prepare_output(args.output, overwrite=args.overwrite)
    report = build_portraits(
        args.source,
        args.output,
        min_side=args.min_side,
        min_face=args.min_face,
        min_sharpness=args.min_sharpness,
        single_face=not args.allow_multiple_faces,
        face_template=args.face_template,
        keypoints_dir=args.keypoints_dir,
        pose_fn=pose,
        captioner=captioner,
        default_caption=args.default_caption,
        overwrite=True,
        detector=detector,
    )
    print(report.summary())
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ..data.portraits import pack_portrait_shards

    shards = pack_portrait_shards(
        args.source, args.output, args.shard_size, overwrite=args.overwrite
    )
    for path in shards:
        print(path)
    return 0
