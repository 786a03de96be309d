"""``instantportrait edit-video``: the one-step editor on every frame of a video or folder."""

from __future__ import annotations

import argparse

from .common import add_device_arguments, add_speed_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit-video",
        help="edit every frame of a video (or a folder of frames) by an instruction",
        description="Edit a video frame by frame with the one-step editor: the prompt encoded "
        "once, frames batched, the same noise for every frame; reports frames/s.",
    )
    p.add_argument("input", help="a video file (.mp4, .mov, .mkv, .webm, .avi) or a frame folder")
    p.add_argument("--prompt", required=True, help="the instruction")
    p.add_argument(
        "--output",
        "-o",
        required=True,
        help="a video file (by suffix) or a folder for PNG frames; records.json beside the "
        "video (or in the frame folder) records how it was made",
    )
    p.add_argument("--model", required=True, help="pipeline folder or Hub id (an IPNet)")
    p.add_argument("--batch-size", type=int, default=4, help="frames per call (default 4)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, one for all frames (default 0)")
    p.add_argument(
        "--steps", type=int, default=1, help="denoising steps (default 1: the one-step editor)"
    )
    p.add_argument("--guidance-scale", type=float, default=None, help="text guidance s_T")
    p.add_argument("--image-guidance-scale", type=float, default=None, help="image guidance s_I")
    p.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="long side frames are edited at (default 512); output keeps the input's size",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="output frame rate, positive (default: the input's; a frame folder: 25). "
        "The input's audio is not copied",
    )
    p.add_argument("--codec", default=None, help="video encoder (default libx264, else mpeg4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_speed_arguments(p)
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..devices import resolve_device, resolve_dtype
    from ..errors import InputError
    from ..io import check_prompt
    from ..speed import resolve_speed
    from ..video import check_fps, edit_video, is_video_path, plan_output, probe
    from .common import quiet_libraries

    if args.batch_size < 1:
        raise InputError(f"--batch-size: at least 1, got {args.batch_size}")
    if args.steps < 1:
        raise InputError(f"--steps: at least 1, got {args.steps}")
    try:
        check_fps(args.fps)
    except InputError as exc:
        raise InputError(f"--{exc}") from None
    check_prompt(args.prompt, name="--prompt")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolve_speed(args.speed, device)
    # Bad input or output fails before the model loads.
    info = probe(args.input)
    plan_output(args.output, info, codec=args.codec, overwrite=args.overwrite)
    from ..io import ResolutionPolicy
    from ..pipelines import load_edit_pipeline

    try:
        ResolutionPolicy(long_side=args.resolution).target_size(info.width, info.height)
    except InputError as exc:
        raise InputError(f"--{exc}") from None
    from ..backbones import dit_editor_folder

    dit = dit_editor_folder(args.model)
    if dit is not None:
        raise InputError(f"--model {args.model}: {dit[0]} edits images, not videos, so far")
    records = _records(args, dtype) if is_video_path(args.output) else None  # read before work
    quiet_libraries()
    pipe = load_edit_pipeline(args.model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.speed not in (None, "none"):
        print(pipe.enable_speed(args.speed, tiny_vae=args.tiny_vae).describe(), file=sys.stderr)
    elif args.tiny_vae:
        pipe.enable_speed("tiny-vae", tiny_vae=args.tiny_vae)
    result = edit_video(
        pipe,
        info.path,
        args.output,
        args.prompt,
        batch_size=args.batch_size,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
        resolution=args.resolution,
        fps=args.fps,
        codec=args.codec,
        overwrite=args.overwrite,
        progress=True,
    )
    _record(args, result, records if records is not None else _records(args, dtype))
    print(result.output)
    print(
        f"{result.frames} frames {result.width}x{result.height} in {result.seconds:.2f} s: "
        f"{result.frames_per_s:.2f} frames/s",
        file=sys.stderr,
    )
    return 0


def _records(args: argparse.Namespace, dtype):
    """The records of the output: a video file's folder (read now, before the work), or the
    frame folder (made by the work)."""
    from pathlib import Path

    from ..records import OutputRecords
    from ..video import is_video_path

    out = Path(args.output)
    return OutputRecords(
        out.parent if is_video_path(out) else out,
        command="edit-video",
        settings={
            "steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "image_guidance_scale": args.image_guidance_scale,
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "fps": args.fps,
            "codec": args.codec,
            "speed": args.speed,
            "dtype": dtype,
        },
        models={"model": args.model, "tiny_vae": args.tiny_vae},
    )


def _record(args: argparse.Namespace, result, records) -> None:
    """``records.json``: in a frame folder one record per frame; beside a video file, the
    video's record in its folder's ``records.json``."""
    out = result.output
    frames = sorted(out.glob("*.png")) if out.is_dir() else None
    size = (result.width, result.height)
    common = {"prompt": args.prompt, "seed": args.seed, "size": size, "input": args.input}
    if frames is None:
        records.add(out.name, frames=result.frames, **common)
        return
    for i, frame in enumerate(frames):
        records.add(frame.name, frame=i, write=False, **common)
    records.write()
