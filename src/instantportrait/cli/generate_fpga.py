"""``instantportrait generate --method fpga``: portraits of one or several identities in a pose.

``--model`` is an FPGA pipeline folder (ID-ControlNet + SD1.5) or a merged RepControlNet folder
(``train repcontrolnet``): the command reads which from the folder's ``model_index.json``.
A RepControlNet also takes ``--control-strength`` (Eq. 6's beta, re-merged at load from the
trained copies beside it) and ``--adapter-scale``.

``--pose`` is an OpenPose/COCO keypoints JSON (drawn by the one condition renderer; its head
points give each person's face region) or a ready condition image (skeleton and/or
landmarks; several identities then need ``--face-mask``, one per identity). Identities go to
people left to right unless ``--id-people`` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: dest -> the flag shown in messages (the short alias when this method owns it)
FLAGS: dict[str, str] = {}


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Every option is ``--fpga-NAME``; the short ``--NAME`` is an alias when no other
    generation method registered it first (the registry shares one parser)."""
    taken = set(group._option_string_actions)

    def add(name: str, **kwargs) -> None:
        dest = "fpga_" + name.replace("-", "_")
        flags = [f"--fpga-{name}"] + ([] if f"--{name}" in taken else [f"--{name}"])
        FLAGS[dest] = flags[-1]
        group.add_argument(*flags, dest=dest, **kwargs)

    add("model", help="an FPGA pipeline folder, or a merged RepControlNet folder")
    add(
        "id-image",
        action="append",
        default=None,
        metavar="FACE",
        help="a face image of one identity (repeat for several people)",
    )
    add("pose", help="keypoints JSON (OpenPose/COCO) or a condition image")
    add(
        "face-mask",
        action="append",
        default=None,
        metavar="MASK",
        help="face-region mask image per identity, in --id-image order (white = face)",
    )
    add(
        "id-people",
        help="comma-separated person ranks from the left (1-based) for each --id-image, "
        "e.g. 2,1 (default: 1,2,...)",
    )
    add("width", type=int, help="output width (default: the pose canvas, else 512)")
    add("height", type=int, help="output height (default: the pose canvas, else 512)")
    group.add_argument(
        "--fpga-steps", dest="fpga_steps", type=int, default=30, help="DDIM steps (default 30)"
    )
    group.add_argument(
        "--fpga-guidance-scale",
        dest="fpga_guidance_scale",
        type=float,
        default=5.0,
        help="classifier-free guidance (default 5)",
    )
    add("id-scale", type=float, default=1.0, help="weight of the ID attention (default 1.0)")
    add(
        "control-strength",
        type=float,
        default=None,
        help="RepControlNet only: beta of the merge (Theta' = Theta + beta Theta_m; default: "
        "the folder's own merge, usually 1)",
    )
    add(
        "adapter-scale",
        type=float,
        default=1.0,
        help="RepControlNet only: weight of the condition adapter's residual (default 1.0)",
    )


def _flag(dest: str) -> str:
    return FLAGS.get(dest, "--" + dest.replace("_", "-"))


def _condition(args, count: int):
    """(condition image, masks (K, H, W) or None) from --pose / --face-mask / --id-people."""
    import numpy as np

    from ..conditions import load_keypoints, render_condition, scale_keypoints
    from ..errors import InputError
    from ..io import load_image
    from ..pipelines.fpga import face_region_masks

    if not args.fpga_pose:
        raise InputError(f"{_flag('fpga_pose')}: a keypoints JSON or a condition image is required")
    masks = None
    if Path(args.fpga_pose).suffix.lower() == ".json":
        kps, canvas = load_keypoints(args.fpga_pose)
        if len(kps) == 0:
            raise InputError(f"{_flag('fpga_pose')} {args.fpga_pose}: no people in the keypoints")
        cw, ch = canvas or (args.fpga_width or 512, args.fpga_height or 512)
        w, h = args.fpga_width or cw, args.fpga_height or ch
        kps = scale_keypoints(kps, w / cw, h / ch)
        cond = render_condition((w, h), keypoints=kps, mode="skeleton")
        if not args.fpga_face_mask:
            ranks = list(range(count))
            if args.fpga_id_people:
                try:
                    ranks = [int(v) - 1 for v in args.fpga_id_people.split(",")]
                except ValueError:
                    raise InputError(
                        f"{_flag('fpga_id_people')}: comma-separated integers, e.g. 2,1"
                    ) from None
                if len(ranks) != count or min(ranks) < 0:
                    raise InputError(
                        f"{_flag('fpga_id_people')}: {count} ranks from 1, "
                        f"got {args.fpga_id_people}"
                    )
            if count > 1 or args.fpga_id_people:
                people = face_region_masks(kps, (w, h), max(ranks) + 1)
                masks = people[ranks]
    else:
        cond = load_image(args.fpga_pose, name=_flag("fpga_pose"))
        if args.fpga_width or args.fpga_height:
            cond = cond.resize((args.fpga_width or cond.width, args.fpga_height or cond.height))
        if count > 1 and not args.fpga_face_mask:
            raise InputError(
                f"{_flag('fpga_face_mask')}: a pose image has no keypoints; "
                "give one mask per identity"
            )
    if args.fpga_face_mask:
        if len(args.fpga_face_mask) != count:
            raise InputError(
                f"{_flag('fpga_face_mask')}: {len(args.fpga_face_mask)} masks "
                f"for {count} identities"
            )
        loaded = []
        for i, m in enumerate(args.fpga_face_mask):
            img = (
                load_image(m, name=f"{_flag('fpga_face_mask')} {i + 1}")
                .convert("L")
                .resize(cond.size)
            )
            loaded.append(np.asarray(img, dtype=np.float32) / 255.0)
        masks = np.stack(loaded)
    return cond, masks


def check_models(args: argparse.Namespace) -> None:
    """The FPGA-family model exists and is one, read from its ``model_index.json``."""
    from ..pipelines.fpga_family import pipeline_class

    model = args.fpga_model or args.model
    if model:
        pipeline_class(model, name=_flag("fpga_model") if args.fpga_model else "--model")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io import check_output, load_image, prepare_output, save_image
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .generate import prompts_of, restored

    prompts = prompts_of(args)
    # the shared --model / --id-image of `generate` stand for --fpga-model / --fpga-id-image
    args.fpga_model = args.fpga_model or args.model
    args.fpga_id_image = args.fpga_id_image or args.id_image
    if not args.fpga_model:
        raise InputError(
            f"{_flag('fpga_model')}: an FPGA pipeline or merged RepControlNet folder is required"
        )
    from ..pipelines.fpga_family import load_fpga_family, pipeline_class

    model = Path(args.fpga_model)
    rep = pipeline_class(model, name=_flag("fpga_model")) == "RepControlNetPipeline"
    if not rep:
        if args.fpga_control_strength is not None:
            raise InputError(f"{_flag('fpga_control_strength')}: only for a RepControlNet model")
        if args.fpga_adapter_scale != 1.0:
            raise InputError(f"{_flag('fpga_adapter_scale')}: only for a RepControlNet model")
    if not args.fpga_id_image:
        raise InputError(f"{_flag('fpga_id_image')}: at least one face image is required")
    faces = [load_image(p, name=f"{_flag('fpga_id_image')} {p}") for p in args.fpga_id_image]
    for name, v in (
        (_flag("fpga_width"), args.fpga_width),
        (_flag("fpga_height"), args.fpga_height),
    ):
        if v is not None and (v < 8 or v % 8):
            raise InputError(f"{name}: a positive multiple of 8, got {v}")
    if args.fpga_steps < 1:
        raise InputError("--fpga-steps: at least 1")
    cond, masks = _condition(args, len(faces))
    check_output(args.output, overwrite=args.overwrite)  # refused before the model loads
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    quiet_libraries()
    pipe = load_fpga_family(
        model,
        dtype=dtype,
        device=device,
        control_strength=args.fpga_control_strength,
        name=_flag("fpga_model"),
    )
    extra = {"adapter_scale": args.fpga_adapter_scale} if rep else {}
    id_embeds = pipe.encode_identity(
        faces, [f"{_flag('fpga_id_image')} {p}" for p in args.fpga_id_image]
    )
    # the model loaded and every face was found: only now is an old output replaced
    out = prepare_output(args.output, overwrite=args.overwrite, create=True)
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
                id_scale=args.fpga_id_scale,
                generator=seeded_generator(args.seed + n, device),
                **extra,
            ).images[0]
            image = restored(image, args, prompt=p)  # several people: each face towards itself
            path = save_image(image, out / f"{n:04d}.png")
            print(path)
            n += 1
    return 0
