"""``instantportrait generate --method fpga``: portraits of one or several identities in a pose.

``--model`` is an FPGA pipeline folder (ID-ControlNet + SD1.5) or a merged RepControlNet folder
(``train repcontrolnet``): the command reads which from the folder's ``model_index.json``.
A RepControlNet also takes ``--control-strength`` (Eq. 6's beta, re-merged at load from the
trained copies beside it) and ``--adapter-scale``.

``--pose`` is an OpenPose/COCO keypoints JSON (drawn by the one condition renderer; its head
points give each person's face region) or a ready condition image (skeleton and/or
landmarks; several identities then need ``--face-mask``, one per identity). Identities go to
people left to right unless ``--id-people`` says otherwise.

``--restore`` restores each small face toward the identity of the person whose face region
covers it (the region where that identity was generated; one identity owns the whole image),
with F_id from the restore model's own encoder; a face in no person's region is left untouched.
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


def _flag(dest: str, args: argparse.Namespace | None = None) -> str:
    """The flag the user typed for ``dest``: the shared ``--model`` / ``--id-image`` of
    ``generate`` when they stood in for ``--fpga-model`` / ``--fpga-id-image``."""
    typed = getattr(args, "_fpga_typed", None) or {}
    return typed.get(dest) or FLAGS.get(dest, "--" + dest.replace("_", "-"))


def _ranks(args: argparse.Namespace, count: int) -> list[int]:
    """0-based person ranks (left to right) of the ``count`` identities (``--id-people``)."""
    from ..errors import InputError

    flag, given = _flag("fpga_id_people", args), args.fpga_id_people
    if not given:
        return list(range(count))
    try:
        ranks = [int(v) - 1 for v in given.split(",")]
    except ValueError:
        raise InputError(f"{flag} {given}: comma-separated person numbers, e.g. 2,1") from None
    ids = _flag("fpga_id_image", args)
    if len(ranks) != count:
        raise InputError(
            f"{flag} {given}: {len(ranks)} person number(s) for {count} {ids} image(s); "
            f"give one per {ids}, in order"
        )
    if min(ranks) < 0:
        raise InputError(f"{flag} {given}: people are numbered from 1 (the leftmost)")
    if len(set(ranks)) != len(ranks):
        raise InputError(f"{flag} {given}: each person can take one identity only")
    return ranks


def _condition(args, count: int):
    """(condition image, masks (K, H, W) or None) from --pose / --face-mask / --id-people."""
    import numpy as np

    from ..conditions import left_to_right, load_keypoints, render_condition, scale_keypoints
    from ..errors import InputError
    from ..io import load_image
    from ..pipelines.fpga import face_region_masks

    def flag(dest: str) -> str:
        return _flag(dest, args)

    if not args.fpga_pose:
        raise InputError(f"{flag('fpga_pose')}: a keypoints JSON or a condition image is required")
    masks = None
    if Path(args.fpga_pose).suffix.lower() == ".json":
        kps, canvas = load_keypoints(args.fpga_pose, name=f"{flag('fpga_pose')} {args.fpga_pose}")
        if len(kps) == 0:
            raise InputError(f"{flag('fpga_pose')} {args.fpga_pose}: no people in the keypoints")
        cw, ch = canvas or (args.fpga_width or 512, args.fpga_height or 512)
        w, h = args.fpga_width or cw, args.fpga_height or ch
        kps = scale_keypoints(kps, w / cw, h / ch)
        cond = render_condition((w, h), keypoints=kps, mode="skeleton")
        if not args.fpga_face_mask:
            ranks = _ranks(args, count)
            people = len(left_to_right(kps))
            if max(ranks) >= people:
                said = f"{flag('fpga_id_people')} {args.fpga_id_people}: person {max(ranks) + 1}"
                raise InputError(
                    (said if args.fpga_id_people else f"{count} {flag('fpga_id_image')} images")
                    + f", but {flag('fpga_pose')} {args.fpga_pose} has {people} "
                    + ("person" if people == 1 else "people")
                )
            if count > 1 or args.fpga_id_people:
                masks = face_region_masks(kps, (w, h), max(ranks) + 1)[ranks]
    else:
        cond = load_image(args.fpga_pose, name=f"{flag('fpga_pose')} {args.fpga_pose}")
        if args.fpga_width or args.fpga_height:
            cond = cond.resize((args.fpga_width or cond.width, args.fpga_height or cond.height))
        if count > 1 and not args.fpga_face_mask:
            raise InputError(
                f"{flag('fpga_face_mask')}: a pose image has no keypoints; "
                "give one mask per identity"
            )
    if args.fpga_face_mask:
        if len(args.fpga_face_mask) != count:
            raise InputError(
                f"{flag('fpga_face_mask')}: {len(args.fpga_face_mask)} masks for {count} identities"
            )
        loaded = []
        for m in args.fpga_face_mask:
            img = load_image(m, name=f"{flag('fpga_face_mask')} {m}").convert("L").resize(cond.size)
            loaded.append(np.asarray(img, dtype=np.float32) / 255.0)
        masks = np.stack(loaded)
    return cond, masks


def _restore_with_identities(image, restorer, id_embeds, regions, prompt, name):
    """``--restore``: each small face restored toward the identity of the person whose face
    region covers it (the region multi-ID attention gave that identity); a face in no
    region is left untouched, and the notes say so."""
    import sys

    if restorer is None:
        return image
    result = restorer.restore(image, id_embeds=id_embeds, regions=regions, prompt=prompt, name=name)
    for note in result.notes:
        print(note, file=sys.stderr)
    return result.image


def check_models(args: argparse.Namespace) -> None:
    """The FPGA-family model exists and is one, read from its ``model_index.json``."""
    from ..pipelines.fpga_family import pipeline_class

    model = args.fpga_model or args.model
    if model:
        pipeline_class(model, name=_flag("fpga_model", args) if args.fpga_model else "--model")


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np

    from ..errors import InputError
    from ..io import load_image
    from ..models.resampler import identity_face
    from ..writer import save_image
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .generate import open_output, plan_outputs, prompts_of

    prompts = prompts_of(args)
    # the shared --model / --id-image of `generate` stand for --fpga-model / --fpga-id-image;
    # messages name the one the user typed
    args._fpga_typed = {}
    if not args.fpga_model and args.model:
        args.fpga_model, args._fpga_typed["fpga_model"] = args.model, "--model"
    if not args.fpga_id_image and args.id_image:
        args.fpga_id_image, args._fpga_typed["fpga_id_image"] = args.id_image, "--id-image"

    def flag(dest: str) -> str:
        return _flag(dest, args)

    if not args.fpga_model:
        raise InputError(
            f"{flag('fpga_model')}: an FPGA pipeline or merged RepControlNet folder is required"
        )
    from ..pipelines.fpga_family import load_fpga_family, pipeline_class

    model = Path(args.fpga_model)
    rep = pipeline_class(model, name=flag("fpga_model")) == "RepControlNetPipeline"
    if not rep:
        if args.fpga_control_strength is not None:
            raise InputError(f"{flag('fpga_control_strength')}: only for a RepControlNet model")
        if args.fpga_adapter_scale != 1.0:
            raise InputError(f"{flag('fpga_adapter_scale')}: only for a RepControlNet model")
    if not args.fpga_id_image:
        raise InputError(f"{flag('fpga_id_image')}: at least one face image is required")
    id_names = [f"{flag('fpga_id_image')} {p}" for p in args.fpga_id_image]
    faces = [load_image(p, name=n) for p, n in zip(args.fpga_id_image, id_names)]
    for name, v in (
        (flag("fpga_width"), args.fpga_width),
        (flag("fpga_height"), args.fpga_height),
    ):
        if v is not None and (v < 8 or v % 8):
            raise InputError(f"{name}: a positive multiple of 8, got {v}")
    if args.fpga_steps < 1:
        raise InputError("--fpga-steps: at least 1")
    cond, masks = _condition(args, len(faces))
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    settings = {
        "steps": args.fpga_steps,
        "guidance_scale": args.fpga_guidance_scale,
        "id_scale": args.fpga_id_scale,
        "control_strength": args.fpga_control_strength,
        "adapter_scale": args.fpga_adapter_scale if rep else None,
        "pose": args.fpga_pose,
        "face_masks": args.fpga_face_mask,
        "id_people": args.fpga_id_people,
        "id_images": args.fpga_id_image,
        "width": cond.width,
        "height": cond.height,
        "dtype": dtype,
    }
    # refused (or found done) before the model loads
    records, todo = plan_outputs(
        args, prompts, lambda im: f"{im.index:04d}.png", settings=settings, models={"model": model}
    )
    if not todo:
        return 0
    from .detector_option import detector_config

    detector = detector_config(args) if getattr(args, "detector", None) else None
    for face, name in zip(faces, id_names):
        # a photo without a face: one line now, not after loading
        identity_face(face, name, detector)
    quiet_libraries()
    pipe = load_fpga_family(
        model,
        dtype=dtype,
        device=device,
        control_strength=args.fpga_control_strength,
        name=flag("fpga_model"),
    )
    extra = {"adapter_scale": args.fpga_adapter_scale} if rep else {}
    if detector is not None:
        pipe.set_face_detector(detector)
    id_embeds = pipe.encode_identity(faces, id_names)
    restorer = restore_ids = regions = None
    if getattr(args, "restore", False):
        from .restore_option import build_restorer

        restorer = build_restorer(args)
        # F_id by the restorer's own encoder (its ID-ControlNet may not be the generator's);
        # each identity owns its face region, one identity owns the whole image
        restore_ids = restorer.encode_identities(faces, id_names)
        if restore_ids is None:
            print(
                f"--restore-model {args.restore_model}: no ID encoder; faces are restored from "
                f"landmarks, prompt and inversion, not toward the {flag('fpga_id_image')} images",
                file=sys.stderr,
            )
        w, h = cond.size
        regions = masks if masks is not None else np.ones((1, h, w), np.float32)
    # the model loaded and every face was found: only now is an old output replaced
    open_output(args, records)
    save_image(cond, records.folder / "condition.png")
    for planned, name in todo:
        image = pipe(
            planned.prompt,
            cond,
            id_embeds=id_embeds,
            id_masks=masks,
            num_inference_steps=args.fpga_steps,
            guidance_scale=args.fpga_guidance_scale,
            id_scale=args.fpga_id_scale,
            generator=seeded_generator(planned.seed, device),
            **extra,
        ).images[0]
        image = _restore_with_identities(
            image, restorer, restore_ids, regions, planned.prompt, name
        )
        path = save_image(image, records.folder / name)
        records.add(name, prompt=planned.prompt, seed=planned.seed, size=image.size)
        print(path)
    return 0
