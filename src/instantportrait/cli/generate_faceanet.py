"""``generate --method faceanet``: a tuned FaceA-Net identity in a new scene.

``--identity runs/alice --prompt "..." --context-model hyper|DIR|tiny -o OUT`` draws the scene
with the context model and repaints the face; ``--context-image PHOTO`` repaints the face of
a given photo instead (no context model needed). Writes ``OUT/NNNN.png``, the context images
``OUT/NNNN_context.png`` and ``OUT/results.json`` (prompts, split, seeds, faces, timings).
"""

from __future__ import annotations

import argparse
import json
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


def check_models(args: argparse.Namespace) -> None:
    """``--inpaint-base`` and ``--context-model`` exist and fit, read from configs only."""
    from .common import check_model_options

    check_model_options(
        args, ("--inpaint-base", "faceanet"), ("--context-model", "faceanet-context")
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import InputError
    from ..io import check_output, load_image, prepare_output, save_image
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .generate import prompts_of, refuse_shared, restored

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
    prompts = prompts_of(args)
    context_image = (
        load_image(args.context_image, name="--context-image") if args.context_image else None
    )
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    check_output(args.output, overwrite=args.overwrite)  # refused before the models load
    quiet_libraries()
    from ..pipelines.faceanet import FaceANetPipeline, NoFaceWarning
    from ..pipelines.faceanet_context import load_context_pipeline

    pipe = FaceANetPipeline.from_identity(args.identity, base=args.inpaint_base).to(device, dtype)
    context = None
    if args.context_model:
        context = load_context_pipeline(args.context_model, device, dtype)
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
    # the models loaded: only now is an old output replaced
    out = prepare_output(args.output, overwrite=args.overwrite, kind="dir", create=True)
    records = []
    index = 0
    for prompt in prompts:
        for k in range(args.num_images_per_prompt):
            seed = args.seed + k
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
            image = restored(result.images[0], args, prompt=prompt)
            save_image(image, out / f"{index:04d}.png")
            save_image(result.context_images[0], out / f"{index:04d}_context.png")
            t_c, t_id = result.prompts[0]
            records.append(
                {
                    "file": f"{index:04d}.png",
                    "prompt": prompt,
                    "context_prompt": t_c,
                    "id_prompt": t_id,
                    "seed": seed,
                    "face_found": result.faces_found[0],
                    "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
                }
            )
            print(f"{out / f'{index:04d}.png'}")
            index += 1
    (out / "results.json").write_text(json.dumps(records, indent=2))
    return 0
