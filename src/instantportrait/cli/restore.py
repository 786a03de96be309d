"""``instantportrait restore``: DIIR restoration of the small faces of images (FPGA §4)."""

from __future__ import annotations

import argparse
import sys

from .common import add_device_arguments
from .restore_option import (
    RESTORE_MODEL_HELP,
    add_codeformer_arguments,
    add_face_parser_argument,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="restore small or broken faces with DIIR (also a face swap with --id-image)",
        description="Restore every face smaller than --restore-below pixels of each image with "
        "DIIR (DDIM inversion + landmark ControlNet + masked AdaIN fusion) and paste it back; "
        "everything else stays bit-identical. One PNG per input in the output folder.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--model", required=True, help=RESTORE_MODEL_HELP)
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
    p.add_argument("-o", "--output", required=True, help="output folder (images and records.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    from .detector_option import add_detector_arguments

    add_detector_arguments(p)
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..io import check_prompt, list_images, load_image
    from ..records import OutputRecords
    from ..writer import atomic_directory, check_output, save_image
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
    if len({f.stem for f in files}) != len(files):
        raise InputError("inputs: two inputs share a file name; outputs would collide")
    id_name = f"--id-image {args.id_image}"
    id_image = load_image(args.id_image, name=id_name) if args.id_image else None
    check_codeformer_arguments(args)
    check_model_options(
        args,
        ("--model", "restore"),
        ("--face-parser", "face-parser"),
        ("--codeformer", "codeformer"),
    )
    if args.detector:
        from .detector_option import detector_config

        kwargs_detector = {"detector": {"method": detector_config(args)}}
    else:
        kwargs_detector = {}
    out = check_output(args.output, overwrite=args.overwrite)  # refused before any model loads
    if id_image is not None:
        from ..models.resampler import identity_face

        # no face: one line now, before any model loads
        identity_face(id_image, id_name, kwargs_detector.get("detector", {}).get("method"))
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    from ..restoration.restorer import FaceRestorer

    quiet_libraries()
    kwargs = ({"prompt": prompt} if prompt else {}) | kwargs_detector
    # every model loads and the identity is encoded before the output is touched: a bad
    # path or an id image the encoder rejects writes (and removes) nothing
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
    restorer.pipeline.set_progress_bar_config(disable=True)  # the bar over the images stays
    id_embeds = None
    if id_image is not None:
        id_embeds = restorer.encode_identities([id_image], [id_name])
        if id_embeds is None:
            print(
                f"{args.model}: this model has no ID encoder; --id-image is not used "
                "(restoration from landmarks, prompt and inversion only)",
                file=sys.stderr,
            )
    # the folder is built aside and moved into place whole: an error or Ctrl-C halfway
    # through the inputs leaves no partial output, and an old output stays until then
    written = []
    with atomic_directory(out, overwrite=True) as tmp:
        records = OutputRecords(
            tmp,
            command="restore",
            settings={
                "restore_below": args.restore_below,
                "steps": args.steps,
                "guidance_scale": args.guidance_scale,
                "stats_region": args.stats_region,
                "codeformer_fidelity": args.codeformer_fidelity if args.codeformer else None,
                "id_image": args.id_image,
                "dtype": dtype,
            },
            models={
                "model": args.model,
                "face_parser": args.face_parser,
                "codeformer": args.codeformer,
            },
            fresh=True,
        )
        for f in tqdm(
            files, desc="restoring", unit="image", disable=len(files) < 2, file=sys.stderr
        ):
            result = restorer.restore(f, id_embeds=id_embeds, name=str(f))
            for note in result.notes:
                print(note, file=sys.stderr)
            save_image(result.image, tmp / f"{f.stem}.png")
            # DIIR is deterministic (DDIM inversion): no seed
            records.add(
                f"{f.stem}.png", prompt=restorer.prompt, seed=None, size=result.image.size, input=f
            )
            written.append(out / f"{f.stem}.png")
    for dest in written:
        print(dest)
    return 0
