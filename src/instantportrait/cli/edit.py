"""``instantportrait edit``: edit portraits by instruction with any InstantPortrait checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_device_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="edit portraits by an instruction",
        description="Edit each input portrait by each prompt; one output PNG per pair.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the instruction, e.g. 'wearing a 1920s flapper dress'")
    src.add_argument("--prompt-file", help="a text file of prompts, one per line ('#' comments)")
    p.add_argument(
        "--model",
        required=True,
        help="pipeline folder or Hub id (IPNet, IDE-Net or InstructPix2Pix format)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default: the checkpoint's recommendation; 1 = IPNet)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=1,
        help="style boost: passes, each output fed back as input (default 1)",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="text guidance s_T (default: the checkpoint's)",
    )
    p.add_argument(
        "--image-guidance-scale",
        type=float,
        default=None,
        help="image guidance s_I (default: the checkpoint's)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="noise seed, the same for every input (default 0)"
    )
    p.add_argument("--output", "-o", default="outputs", help="output folder (default outputs/)")
    p.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="long side the input is resized to, multiple of 8 (default 512)",
    )
    p.add_argument("--keep-size", action="store_true", help="resize results back to the input size")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arguments(p)
    from .restore_option import add_restore_arguments

    add_restore_arguments(p.add_argument_group("face restoration (DIIR)"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..io import (
        check_prompt,
        list_images,
        load_image,
        read_prompt_file,
        restore_size,
        safe_output_path,
        save_image,
    )
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .restore_option import build_restorer, maybe_restore

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps: must be at least 1, got {args.steps}")
    if args.iterations < 1:
        raise InputError(f"--iterations: must be at least 1, got {args.iterations}")
    prompts = (
        read_prompt_file(args.prompt_file)
        if args.prompt_file
        else [check_prompt(args.prompt, name="--prompt")]
    )
    files = list_images(args.inputs)
    # Validate every input and every output name before loading the model: bad input fails fast.
    sizes = {f: load_image(f).size for f in files}
    out_dir = Path(args.output)
    jobs = []
    for f in files:
        for j, prompt in enumerate(prompts):
            name = f"{f.stem}.png" if len(prompts) == 1 else f"{f.stem}_{j:03d}.png"
            jobs.append((f, prompt, safe_output_path(out_dir, name, overwrite=args.overwrite)))
    if len({dest for _, _, dest in jobs}) != len(jobs):
        raise InputError("inputs: two inputs share a file name; outputs would collide")

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.restore:
        build_restorer(args)  # a missing or bad --restore-model fails before any editing
    from ..pipelines import InstantPortraitPipeline

    quiet_libraries()
    pipe = InstantPortraitPipeline.from_pretrained(args.model).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    steps = args.steps or pipe.config.recommended_steps
    bar = tqdm(
        jobs,
        desc=f"editing ({steps} step{'s' * (steps > 1)})",
        unit="image",
        disable=len(jobs) < 2,
        file=sys.stderr,
    )
    for f, prompt, dest in bar:
        image = load_image(f)
        result = pipe(
            prompt,
            image,
            num_inference_steps=steps,
            guidance_scale=args.guidance_scale,
            image_guidance_scale=args.image_guidance_scale,
            iterations=args.iterations,
            generator=seeded_generator(args.seed, device),
            resolution=args.resolution,
        ).images[0]
        result = maybe_restore([result], args, [image], prompt=None)[0]
        if args.keep_size:
            result = restore_size(result, sizes[f])
        save_image(result, dest)
        print(dest)
    return 0
