"""``instantportrait generate --method fpga``: portraits of one or several identities in a pose.

``--pose`` is an OpenPose/COCO keypoints JSON (drawn by the one condition renderer; its head
points give each person's face region) or a ready condition image (skeleton and/or
landmarks; several identities then need ``--face-mask``, one per identity). Identities go to
people left to right unless ``--id-people`` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(group: argparse._ArgumentGroup) -> None:
    taken = set(group._option_string_actions)  # shared with the parser and the other methods
    flags = ["--fpga-model"] + ([] if "--model" in taken else ["--model"])
    group.add_argument(*flags, dest="fpga_model", help="an FPGA pipeline folder")
    group.add_argument(
        "--id-image",
        action="append",
        default=None,
        metavar="FACE",
        help="a face image of one identity (repeat for several people)",
    )
    group.add_argument("--pose", help="keypoints JSON (OpenPose/COCO) or a condition image")
    group.add_argument(
        "--face-mask",
        action="append",
        default=None,
        metavar="MASK",
        help="face-region mask image per identity, in --id-image order (white = face)",
    )
    group.add_argument(
        "--id-people",
        help="comma-separated person ranks from the left (1-based) for each --id-image, "
        "e.g. 2,1 (default: 1,2,...)",
    )
    group.add_argument("--width", type=int, help="output width (default: the pose canvas, 512)")
    group.add_argument("--height", type=int, help="output height (default: the pose canvas)")
    group.add_argument("--fpga-steps", type=int, default=30, help="DDIM steps (default 30)")
    group.add_argument("--fpga-guidance-scale", type=float, default=5.0, help="CFG (default 5)")
    group.add_argument("--id-scale", type=float, default=1.0, help="ID attention weight (1.0)")


def _condition(args, count: int):
    """(condition image, masks (K, H, W) or None) from --pose / --face-mask / --id-people."""
    import numpy as np

    from ..conditions import load_keypoints, render_condition, scale_keypoints
    from ..errors import InputError
    from ..io import load_image
    from ..pipelines.fpga import face_region_masks

    if not args.pose:
        raise InputError("--pose: a keypoints JSON or a condition image is required")
    masks = None
    if Path(args.pose).suffix.lower() == ".json":
        kps, canvas = load_keypoints(args.pose)
        if len(kps) == 0:
            raise InputError(f"--pose {args.pose}: no people in the keypoints")
        cw, ch = canvas or (args.width or 512, args.height or 512)
        w, h = args.width or cw, args.height or ch
        kps = scale_keypoints(kps, w / cw, h / ch)
        cond = render_condition((w, h), keypoints=kps, mode="skeleton")
        if not args.face_mask:
            ranks = list(range(count))
            if args.id_people:
                try:
                    ranks = [int(v) - 1 for v in args.id_people.split(",")]
                except ValueError:
                    raise InputError("--id-people: comma-separated integers, e.g. 2,1") from None
                if len(ranks) != count or min(ranks) < 0:
                    raise InputError(f"--id-people: {count} ranks from 1, got {args.id_people}")
            if count > 1 or args.id_people:
                people = face_region_masks(kps, (w, h), max(ranks) + 1)
                masks = people[ranks]
    else:
        cond = load_image(args.pose, name="--pose")
        if args.width or args.height:
            cond = cond.resize((args.width or cond.width, args.height or cond.height))
        if count > 1 and not args.face_mask:
            raise InputError(
                "--face-mask: a pose image has no keypoints; give one mask per --id-image"
            )
    if args.face_mask:
        if len(args.face_mask) != count:
            raise InputError(f"--face-mask: {len(args.face_mask)} masks for {count} identities")
        loaded = []
        for i, m in enumerate(args.face_mask):
            img = load_image(m, name=f"--face-mask {i + 1}").convert("L").resize(cond.size)
            loaded.append(np.asarray(img, dtype=np.float32) / 255.0)
        masks = np.stack(loaded)
    return cond, masks


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError, ModelNotFoundError
    from ..io import load_image, prepare_output, save_image
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .generate import prompts_of

    prompts = prompts_of(args)
    if not args.fpga_model:
        raise InputError("--fpga-model/--model: the FPGA pipeline folder is required")
    if not args.id_image:
        raise InputError("--id-image: at least one face image is required")
    faces = [load_image(p, name=f"--id-image {p}") for p in args.id_image]
    for name, v in (("--width", args.width), ("--height", args.height)):
        if v is not None and (v < 8 or v % 8):
            raise InputError(f"{name}: a positive multiple of 8, got {v}")
    if args.fpga_steps < 1:
        raise InputError("--fpga-steps: at least 1")
    cond, masks = _condition(args, len(faces))
    model = Path(args.fpga_model)
    if not (model / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"--fpga-model {model}: no FPGA pipeline folder (model_index.json); train one with "
            "`instantportrait train fpga` or write a tiny one with `init-tiny --kind fpga`"
        )
    out = prepare_output(args.output, overwrite=args.overwrite)  # checked; made when writing
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    quiet_libraries()
    from ..pipelines.fpga import FPGAPipeline

    pipe = FPGAPipeline.from_pretrained(str(model), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    id_embeds = pipe.encode_identity(faces, [f"--id-image {p}" for p in args.id_image])
    out.mkdir(parents=True, exist_ok=True)
    save_image(cond, out / "condition.png")
    n = 0
    for p in prompts:
        for _ in range(args.num_images_per_prompt):
            image = pipe(
                p,
                cond,
                id_embeds=id_embeds,
                id_masks=masks,
                num_inference_steps=args.fpga_steps,
                guidance_scale=args.fpga_guidance_scale,
                id_scale=args.id_scale,
                generator=seeded_generator(args.seed + n, device),
            ).images[0]
            path = save_image(image, out / f"{n:04d}.png")
            print(path)
            n += 1
    return 0
