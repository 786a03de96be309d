"""``generate --method faceanet``: a tuned FaceA-Net identity in a new scene.

``--identity runs/alice --prompt "..." --context-model hyper|DIR|tiny -o OUT`` draws the scene
with the context model and repaints the face; ``--context-image PHOTO`` repaints the face of
a given photo instead (no context model needed). Writes ``OUT/NNNN.png``, the context images
``OUT/NNNN_context.png`` and ``OUT/records.json`` (:mod:`..records`; per image also its split
prompts, context file, whether a face was found, timings).
"""

from __future__ import annotations

import argparse
import warnings


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--identity", help="a tuned identity: the run folder of train faceanet")
    group.add_argument(
        "--context-model",
        help="G_c: hyper, lightning, lcm or turbo (few-step SDXL as FastFace loads it), an SDXL "
        "folder or Hub id, or tiny (a test model)",
    )
    group.add_argument("--context-image", help="repaint the face of this photo (no G_c)")
    group.add_argument("--context-prompt", help="T_context, instead of the rule-based split")
    group.add_argument("--id-prompt", help="T_id, instead of the rule-based split")
    group.add_argument(
        "--face-index", type=int, help="the face to repaint, 0 = leftmost (default: the largest)"
    )
    group.add_argument(
        "--inpaint-guidance-scale", type=float, default=7.5, help="CFG on T'_id (default 7.5)"
    )
    group.add_argument(
        "--inpaint-steps", type=int, default=50, help="G_id sampler steps (default 50)"
    )
    group.add_argument(
        "--context-steps",
        type=int,
        default=None,
        help="G_c steps (default: a family's own, e.g. 4 for hyper; else 30)",
    )
    group.add_argument(
        "--context-guidance-scale",
        type=float,
        default=None,
        help="G_c CFG (default: a family's own; else 5)",
    )
    group.add_argument(
        "--context-size",
        type=int,
        default=None,
        help="G_c image side (default: a family's own, e.g. 512 for turbo; else 1024)",
    )
    group.add_argument(
        "--trim-padding",
        action="store_true",
        help="keep only BOS..EOS (+ [feat] slots) of each T'_id segment",
    )
    group.add_argument(
        "--inpaint-base", help="override the identity's base inpainting model (a folder)"
    )


def check_numbers(args: argparse.Namespace) -> None:
    """The numeric options, checked before anything loads or is written."""
    from ..errors import InputError

    if args.inpaint_guidance_scale < 1.0:
        raise InputError(
            f"--inpaint-guidance-scale: must be >= 1 (1 = no guidance), got "
            f"{args.inpaint_guidance_scale}"
        )
    for flag, value in (
        ("--inpaint-steps", args.inpaint_steps),
        ("--context-steps", args.context_steps),
    ):
        if value is not None and value < 1:
            raise InputError(f"{flag}: must be at least 1, got {value}")
    if args.face_index is not None and args.face_index < 0:
        raise InputError(f"--face-index: 0 or more (0 = leftmost face), got {args.face_index}")
    if args.context_guidance_scale is not None and args.context_guidance_scale < 0:
        raise InputError(
            f"--context-guidance-scale: must be >= 0, got {args.context_guidance_scale}"
        )
    if args.context_size is not None and (args.context_size < 64 or args.context_size % 8):
        raise InputError(f"--context-size: a multiple of 8, at least 64, got {args.context_size}")


def check_models(args: argparse.Namespace) -> None:
    """``--inpaint-base`` and ``--context-model`` exist and fit, read from configs only."""
    from .common import check_model_options

    check_model_options(
        args, ("--inpaint-base", "faceanet"), ("--context-model", "faceanet-context")
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import InputError
    from ..io import load_image
    from ..writer import save_image
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .generate import open_output, plan_outputs, prompts_of, refuse_shared, restored

    refuse_shared(
        args,
        "model",
        "id_image",
        hint=" (it takes --identity RUN, a person tuned with `train faceanet`, and "
        "--context-model)",
    )
    if not args.identity:
        raise InputError("--identity: the tuned identity (run folder) is required")
    if not args.context_image and not args.context_model:
        raise InputError("--context-model or --context-image: one is required")
    if args.context_image and args.context_model:
        raise InputError("--context-image: give it or --context-model, not both")
    check_numbers(args)
    prompts = prompts_of(args)
    from ..pipelines.faceanet_parts import read_identity_meta

    read_identity_meta(args.identity)  # a damaged identity: one line before any model loads
    context_image = (
        load_image(args.context_image, name="--context-image") if args.context_image else None
    )
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    from ..pipelines.faceanet_context import context_defaults

    defaults = context_defaults(args.context_model)
    size = args.context_size or defaults["size"]
    context_kwargs = {
        "num_inference_steps": args.context_steps or defaults["steps"],
        "guidance_scale": (
            defaults["guidance_scale"]
            if args.context_guidance_scale is None
            else args.context_guidance_scale
        ),
        "height": size,
        "width": size,
    }
    settings = {
        "context_prompt": args.context_prompt,
        "id_prompt": args.id_prompt,
        "face_index": args.face_index,
        "inpaint_steps": args.inpaint_steps,
        "inpaint_guidance_scale": args.inpaint_guidance_scale,
        "context": context_kwargs if args.context_model else None,
        "context_image": args.context_image,
        "trim_padding": args.trim_padding,
        "dtype": dtype,
    }
    models = {
        "identity": args.identity,
        "inpaint_base": args.inpaint_base,
        "context_model": args.context_model,
    }
    # refused (or found done) before the models load
    records, todo = plan_outputs(
        args, prompts, lambda im: f"{im.index:04d}.png", settings=settings, models=models
    )
    if not todo:
        return 0
    quiet_libraries()
    from ..pipelines.faceanet import FaceANetPipeline, NoFaceWarning
    from ..pipelines.faceanet_context import load_context_pipeline

    pipe = FaceANetPipeline.from_identity(args.identity, base=args.inpaint_base).to(device, dtype)
    context = None
    if args.context_model:
        context = load_context_pipeline(args.context_model, device, dtype)
    # an old output is replaced only once the first image exists (the models loaded, the
    # face found): a failed run leaves no empty folder
    opened = False
    out = records.folder
    for planned, name in todo:
        prompt, seed = planned.prompt, planned.seed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoFaceWarning)
            result = pipe(
                prompt,
                context_image=context_image,
                context_pipeline=context,
                context_prompt=args.context_prompt,
                id_prompt=args.id_prompt,
                face_index=args.face_index,
                num_inference_steps=args.inpaint_steps,
                guidance_scale=args.inpaint_guidance_scale,
                generator=seeded_generator(seed, device),
                context_kwargs=context_kwargs if context is not None else None,
                trim_padding=args.trim_padding,
            )
        for w in caught:
            if issubclass(w.category, NoFaceWarning):
                print(f"warning: {prompt!r} seed {seed}: {w.message}", file=sys.stderr)
        image = restored(result.images[0], args, prompt=prompt, name=name)
        if not opened:
            open_output(args, records)
            opened = True
        context_name = name.replace(".png", "_context.png")
        save_image(result.context_images[0], out / context_name)
        save_image(image, out / name)
        t_c, t_id = result.prompts[0]
        records.add(
            name,
            prompt=prompt,
            seed=seed,
            size=image.size,
            context_file=context_name,
            split_prompts={"context": t_c, "id": t_id},
            face_found=result.faces_found[0],
            timings_s={k: round(v, 3) for k, v in result.timings.items()},
        )
        print(out / name)
    return 0
