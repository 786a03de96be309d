"""``instantportrait edit``: edit portraits by instruction with any InstantPortrait checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_device_arguments, add_speed_arguments


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
        "--negative-prompt",
        default=None,
        help="replaces the empty prompt of the unconditional branches (guided modes only)",
    )
    p.add_argument(
        "--model",
        required=True,
        help="pipeline folder or Hub id (IPNet, IDE-Net or InstructPix2Pix format), a FLUX.1 "
        "Kontext folder (the teacher, or an exported one-step student), or a single-file "
        ".safetensors checkpoint with --config",
    )
    p.add_argument(
        "--config",
        default=None,
        help="for a single-file --model: a local diffusers folder of the same architecture",
    )
    p.add_argument(
        "--no-ema",
        action="store_true",
        help="for a single-file --model holding two UNets (InstructPix2Pix's release): load the "
        "non-EMA weights instead of the EMA ones the official code samples with",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:WEIGHT]",
        help="LoRA weights (diffusers/PEFT format) to load, repeatable (default weight 1)",
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
        help="text guidance s_T (default: the checkpoint's); for a FLUX.1 Kontext model its "
        "distilled guidance (default 2.5)",
    )
    p.add_argument(
        "--image-guidance-scale",
        type=float,
        default=None,
        help="image guidance s_I (default: the checkpoint's)",
    )
    p.add_argument(
        "--num-images-per-prompt",
        type=int,
        default=1,
        help="outputs per input and prompt, each with its own noise (default 1)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of each input's first output; output k of prompt p gets seed + p*N + k, "
        "N = --num-images-per-prompt (default 0)",
    )
    p.add_argument(
        "--output",
        "-o",
        default="outputs",
        help="output folder (default outputs/); records.json there records each output",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="long side the input is resized to, multiple of 8 (default 512)",
    )
    p.add_argument("--keep-size", action="store_true", help="resize results back to the input size")
    done = p.add_mutually_exclusive_group()
    done.add_argument("--overwrite", action="store_true", help="replace existing output files")
    done.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep the outputs records.json says were made as asked and edit the rest "
        "(resume an interrupted batch)",
    )
    add_speed_arguments(p)
    add_device_arguments(p)
    from .restore_option import add_restore_arguments

    add_restore_arguments(p.add_argument_group("face restoration (DIIR)"))
    p.set_defaults(func=run)


def output_names(files: list[Path], n_prompts: int, per: int) -> list[list[str]]:
    """Output file names per input file: ``stem.png``, with ``_PPP`` for several prompts and
    ``_K`` for several images per prompt."""
    names = []
    for f in files:
        row = []
        for j in range(n_prompts):
            stem = f.stem if n_prompts == 1 else f"{f.stem}_{j:03d}"
            row.append([f"{stem}.png"] if per == 1 else [f"{stem}_{k}.png" for k in range(per)])
        names.append(row)
    return names


def parse_lora(spec: str) -> tuple[str, float]:
    """``PATH[:WEIGHT]`` -> (path, weight); a path with a colon keeps it when no number
    follows."""
    from ..errors import InputError

    path, _, weight = spec.rpartition(":")
    if path and weight:
        try:
            return path, float(weight)
        except ValueError:
            pass
    if not Path(spec).exists():
        raise InputError(f"--lora {spec}: no such file or folder")
    return spec, 1.0


def check_kontext_arguments(args: argparse.Namespace) -> None:
    """For a FLUX.1 Kontext or Qwen-Image-Edit ``--model``: refuse the InstructPix2Pix-only
    options in one line (Kontext's guidance is one distilled scalar, ``--guidance-scale``;
    Qwen-Image-Edit's is true CFG, ``--guidance-scale`` with ``--negative-prompt``)."""
    from ..backbones import dit_editor_folder
    from ..errors import InputError

    dit = dit_editor_folder(args.model)
    if dit is None:
        return
    family = dit[0]
    unused = {
        "--image-guidance-scale": args.image_guidance_scale is not None,
        "--negative-prompt": family == "FLUX.1 Kontext" and args.negative_prompt is not None,
        "--config": args.config is not None,
        "--speed": args.speed not in (None, "none"),
        "--tiny-vae": bool(args.tiny_vae),
    }
    for option, given in unused.items():
        if given:
            raise InputError(f"{option}: not used by a {family} model; leave it out")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..devices import resolve_device, resolve_dtype, seeded_generator
    from ..errors import InputError
    from ..io import (
        ResolutionPolicy,
        check_prompt,
        list_images,
        load_image,
        read_prompt_file,
        restore_size,
    )
    from ..records import OutputRecords, image_seed
    from ..speed import resolve_speed
    from ..writer import check_output_path, safe_output_path, save_image
    from .common import quiet_libraries
    from .restore_option import (
        build_restorer,
        check_restore_arguments,
        maybe_restore,
        restore_record,
    )

    # Every argument, input and output is checked before the model loads or anything is written.
    check_restore_arguments(args)
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps: must be at least 1, got {args.steps}")
    if args.iterations < 1:
        raise InputError(f"--iterations: must be at least 1, got {args.iterations}")
    if args.num_images_per_prompt < 1:
        raise InputError(f"--num-images-per-prompt: at least 1, got {args.num_images_per_prompt}")
    if args.no_ema and not str(args.model).lower().endswith((".safetensors", ".ckpt")):
        raise InputError("--no-ema: only for a single-file --model (.safetensors or .ckpt)")
    check_kontext_arguments(args)
    try:
        ResolutionPolicy(long_side=args.resolution)
    except InputError as exc:
        raise InputError(f"--{exc}") from None
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolve_speed(args.speed, device)
    loras = [parse_lora(s) for s in args.lora]
    prompts = (
        read_prompt_file(args.prompt_file)
        if args.prompt_file
        else [check_prompt(args.prompt, name="--prompt")]
    )
    negative = (
        check_prompt(args.negative_prompt, name="--negative-prompt")
        if args.negative_prompt is not None
        else None
    )
    files = list_images(args.inputs)
    sizes = {f: load_image(f).size for f in files}
    # The output folder gathers files: it may exist; each output file is checked on its own.
    from .common import check_model_options
    from .restore_option import check_restore_models

    check_restore_models(args)
    check_model_options(args, ("--model", "edit"))  # configs and headers only, no weights
    out_dir = check_output_path(args.output, kind="dir")
    restore = restore_record(args)
    records = OutputRecords(
        out_dir,
        command="edit",
        settings={
            "steps": args.steps,
            "iterations": args.iterations,
            "guidance_scale": args.guidance_scale,
            "image_guidance_scale": args.image_guidance_scale,
            "negative_prompt": negative,
            "resolution": args.resolution,
            "keep_size": args.keep_size,
            "speed": args.speed,
            "dtype": dtype,
            "restore": restore["settings"] if restore else None,
        },
        models={"model": args.model, "config": args.config, "tiny_vae": args.tiny_vae}
        | {f"lora{i}": f"{path}:{weight:g}" for i, (path, weight) in enumerate(loras)}
        | {"restore": restore["model"] if restore else None},
    )
    per = args.num_images_per_prompt
    jobs, skipped = [], 0
    for f, row in zip(files, output_names(files, len(prompts), per)):
        for j, (prompt, names) in enumerate(zip(prompts, row)):
            seeds = [image_seed(args.seed, j, k, per) for k in range(per)]
            dests = []
            for name, seed in zip(names, seeds):
                if args.skip_existing and records.is_done(
                    name, prompt=prompt, seed=seed, input=str(f)
                ):
                    dests.append(None)
                    continue
                replace = args.overwrite or args.skip_existing
                dests.append(safe_output_path(out_dir, name, overwrite=replace))
            if all(d is None for d in dests):
                skipped += len(dests)
                continue
            skipped += dests.count(None)
            jobs.append((f, prompt, seeds, [d or out_dir / n for d, n in zip(dests, names)], dests))
    flat = [d for *_, ds, _ in jobs for d in ds]
    if len(set(flat)) != len(flat):
        raise InputError("inputs: two inputs share a file name; outputs would collide")
    if skipped:
        print(f"skipping {skipped} existing output(s) (--skip-existing)", file=sys.stderr)
    if not jobs:
        return 0

    if args.restore:
        build_restorer(args)  # a missing or bad --restore-model fails before any editing
    from ..pipelines import load_edit_pipeline

    quiet_libraries()
    pipe = load_edit_pipeline(
        args.model, config=args.config, device=device, dtype=dtype, use_ema=not args.no_ema
    )
    if getattr(pipe, "unet_source", None):
        print(f"model: {pipe.unet_source}", file=sys.stderr)
    for i, (path, _weight) in enumerate(loras):
        pipe.load_lora_weights(path, adapter_name=f"lora{i}")
    if loras:
        pipe.set_adapters([f"lora{i}" for i in range(len(loras))], [w for _, w in loras])
    if args.speed not in (None, "none"):
        state = pipe.enable_speed(args.speed, tiny_vae=args.tiny_vae)
        print(state.describe(), file=sys.stderr)
    elif args.tiny_vae:
        pipe.enable_speed("tiny-vae", tiny_vae=args.tiny_vae)
    steps = args.steps or pipe.recommended_steps
    # One bar over the images when there are several; a bar over the steps for a single
    # multi-step edit (the pipeline's own).
    single_multi_step = len(jobs) == 1 and steps * args.iterations > 1
    pipe.set_progress_bar_config(disable=not single_multi_step, desc="denoising", leave=False)
    bar = tqdm(
        jobs,
        desc=f"editing ({steps} step{'s' * (steps > 1)})",
        unit="image",
        disable=len(jobs) < 2,
        file=sys.stderr,
    )
    for f, prompt, seeds, dests, todo in bar:
        per = len(dests)
        generator = [seeded_generator(seed, device) for seed in seeds]
        source = load_image(f)
        results = pipe(
            prompt,
            source,
            num_inference_steps=steps,
            guidance_scale=args.guidance_scale,
            image_guidance_scale=args.image_guidance_scale,
            negative_prompt=negative,
            iterations=args.iterations,
            generator=generator if per > 1 else generator[0],
            resolution=args.resolution,
            num_images_per_prompt=per,
        ).images
        # the edit's identity is its input's: DIIR restores each small face towards it
        results = maybe_restore(results, args, [source], prompt=None, names=[d.name for d in dests])
        for result, dest, seed, wanted in zip(results, dests, seeds, todo):
            if wanted is None:  # done already (--skip-existing)
                continue
            if args.keep_size:
                result = restore_size(result, sizes[f])
            save_image(result, dest)
            records.add(
                dest.name,
                prompt=prompt,
                seed=seed,
                size=result.size,
                input=str(f),
                resolved={"steps": steps},
            )
            print(dest)
    return 0
