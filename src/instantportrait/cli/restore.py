"""``instantportrait restore``: DIIR restoration of the small faces of images (FPGA §4)."""

from __future__ import annotations

import argparse
import sys

from .common import add_device_arguments
from .restore_option import add_codeformer_arguments, add_face_parser_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="restore small or broken faces with DIIR (also a face swap with --id-image)",
        description="Restore every face smaller than --restore-below pixels of each image with "
        "DIIR (DDIM inversion + landmark ControlNet + masked AdaIN fusion) and paste it back; "
        "everything else stays bit-identical. One PNG per input in the output folder.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--model", required=True, help="DIIR model folder (init-tiny --kind restore)")
    p.add_argument(
        "--id-image",
        default=None,
        help="the identity the faces should have (default: each face's own; another "
        "person's face makes it a face swap)",
    )
    p.add_argument(
        "--restore-below",
        type=float,
        default=100,
        help="restore faces whose box is smaller than this many pixels (default 100)",
    )
    p.add_argument("--prompt", default=None, help="the prompt C (default: a generic face prompt)")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps T (default 30)")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="CFG (default 5)")
    p.add_argument(
        "--stats-region",
        default="global",
        choices=["global", "face", "literal"],
        help="AdaIN statistics of the fusion (default global)",
    )
    add_face_parser_argument(p)
    add_codeformer_arguments(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..io import check_output, check_prompt, list_images, load_image, prepare_output, save_image
    from .common import check_model_options, quiet_libraries, resolve_device, resolve_dtype
    from .restore_option import build_codeformer, build_face_parser, check_codeformer_arguments

    if args.steps < 1:
        raise InputError(f"--steps: must be at least 1, got {args.steps}")
    if args.restore_below <= 0:
        raise InputError(f"--restore-below: must be positive, got {args.restore_below}")
    if args.guidance_scale < 1:
        raise InputError(f"--guidance-scale: must be >= 1, got {args.guidance_scale}")
    prompt = check_prompt(args.prompt, name="--prompt") if args.prompt is not None else None
    files = list_images(args.inputs)
    for f in files:
        load_image(f)
    id_image = load_image(args.id_image, name="--id-image") if args.id_image else None
    if len({f.stem for f in files}) != len(files):
        raise InputError("inputs: two inputs share a file name; outputs would collide")
    check_codeformer_arguments(args)
    check_model_options(
        args,
        ("--model", "restore"),
        ("--face-parser", "face-parser"),
        ("--codeformer", "codeformer"),
    )
    check_output(args.output, overwrite=args.overwrite)  # refused before any model loads
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    from ..restoration.restorer import FaceRestorer

    quiet_libraries()
    kwargs = {"prompt": prompt} if prompt else {}
    # every model loads before the output is touched: a bad path writes (and removes) nothing
    restorer = FaceRestorer.from_pretrained(
        args.model,
        restore_below=args.restore_below,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        stats_region=args.stats_region,
        mask_fn=build_face_parser(args, device=device, dtype=dtype),
        enhancer=build_codeformer(args, device=device, dtype=dtype),
        **kwargs,
    )
    restorer.pipeline.to(device=device)
    if dtype != restorer.pipeline.unet.dtype:
        restorer.pipeline.to(dtype=dtype)
    out_dir = prepare_output(args.output, overwrite=args.overwrite, kind="dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in tqdm(files, desc="restoring", unit="image", disable=len(files) < 2, file=sys.stderr):
        result = restorer.restore(f, id_image, name=str(f))
        for note in result.notes:
            print(note, file=sys.stderr)
        dest = out_dir / f"{f.stem}.png"
        save_image(result.image, dest)
        print(dest)
    return 0
