"""``instantportrait generate --method fastface``: FastFace on a few-step SDXL.

Example::

    instantportrait generate --method fastface --id-image face.png --face-model w600k_r50.onnx \\
        --model hyper --preset fastface-am1 --prompt "a portrait in a garden" -o out/

Outputs ``NNN_MM.png`` (prompt NNN, image MM) and ``records.json`` (:mod:`..records`).
"""

from __future__ import annotations

import argparse
import sys

FAMILY_NAMES = ("hyper", "lightning", "lcm", "turbo")
PRESET_NAMES = (
    "baseline",
    "am1",
    "am1_paper",
    "am2",
    "am2_noadain",
    "dcg",
    "fastface-am1",
    "fastface-am2",
)


def add_arguments(group: argparse._ArgumentGroup) -> None:
    # --id-image (one; its largest face is used) and --model (hyper, lightning, lcm, turbo:
    # SDXL base + that family's weights, or a folder of a few-step SDXL pipeline; default
    # hyper) are the generate command's shared options.
    group.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        help="the family of a --model folder (scheduler and resolution) when it does not say",
    )
    group.add_argument(
        "--preset",
        default="fastface-am1",
        help=f"{', '.join(PRESET_NAMES)}, or a JSON file of a custom preset (default fastface-am1)",
    )
    group.add_argument(
        "--ip-adapter-scale", type=float, default=0.8, help="adapter strength (default 0.8)"
    )
    group.add_argument(
        "--lora-scale", type=float, default=1.0, help="the adapter's LoRA strength (default 1.0)"
    )
    group.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    group.add_argument(
        "--resolution", type=int, help="image side (default: the family's, 1024; Turbo 512)"
    )
    group.add_argument(
        "--face-model",
        help="ArcFace model: insightface buffalo_l w600k_r50.onnx / antelopev2 glintr100.onnx "
        "(or their folder: its SCRFD then detects), or an arcface_torch .pth/.safetensors",
    )
    group.add_argument("--base", help="SDXL base, folder or Hub id (default SDXL base 1.0)")
    group.add_argument(
        "--distilled", help="the family's weights, folder or Hub id (default its Hub repo)"
    )
    group.add_argument(
        "--ip-adapter",
        help="FaceID-Plus-v2 adapter, folder or Hub id (default h94/IP-Adapter-FaceID)",
    )
    group.add_argument("--image-encoder", help="CLIP ViT-H/14 vision model, folder or Hub id")


def _preset(value: str):
    from pathlib import Path

    from ..errors import InputError
    from ..pipelines.fastface_presets import fastface_preset, load_preset_file

    if value in PRESET_NAMES:
        return fastface_preset(value)
    if not Path(value).is_file():
        raise InputError(
            f"--preset: one of {', '.join(PRESET_NAMES)} or a JSON file; got {value!r}"
        )
    return load_preset_file(value)


def _models(args: argparse.Namespace, model: str) -> dict[str, str | None]:
    """The model sources of a run, defaults by the Hub id they stand for."""
    from ..pipelines.fastface_presets import (
        DEFAULT_ADAPTER,
        DEFAULT_BASE,
        DEFAULT_IMAGE_ENCODER,
        FAMILIES,
    )

    family_name = model in FAMILY_NAMES
    return {
        "model": model,
        "base": args.base or (DEFAULT_BASE if family_name else None),
        "distilled": args.distilled or (FAMILIES[model].source if family_name else None),
        "ip_adapter": args.ip_adapter or "/".join(DEFAULT_ADAPTER),
        "image_encoder": args.image_encoder or DEFAULT_IMAGE_ENCODER,
        "face_model": args.face_model,
    }


def check_models(args: argparse.Namespace) -> None:
    """Every model option names a model that exists and fits, read from configs and headers
    (no weights), before the face model or the pipeline loads."""
    from ..model_check import check_model
    from ..pipelines.fastface_presets import DEFAULT_ADAPTER
    from .common import check_model_options

    check_model_options(
        args,
        ("--face-model", "face-model"),
        ("--model", "fastface"),
        ("--base", "fastface"),
        ("--distilled", "distilled"),
        ("--image-encoder", "image-encoder"),
    )
    if args.ip_adapter is not None:
        weight = getattr(args, "ip_adapter_weight", None) or DEFAULT_ADAPTER[1]
        check_model(args.ip_adapter, "ip-adapter", "--ip-adapter", file=weight)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..pipelines.faceid import FaceIDEncoder, load_face_model
    from ..writer import save_image
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .detector_option import detector_config
    from .generate import open_output, plan_outputs, prompts_of, restored, single_id_image

    prompts = prompts_of(args)
    id_image = single_id_image(args)
    model = args.model or "hyper"
    if args.steps < 1:
        raise InputError(f"--steps: must be at least 1, got {args.steps}")
    if args.resolution is not None and (args.resolution < 32 or args.resolution % 8):
        raise InputError(f"--resolution: a multiple of 8, at least 32; got {args.resolution}")
    for flag in ("ip_adapter_scale", "lora_scale"):
        if getattr(args, flag) < 0:
            raise InputError(f"--{flag.replace('_', '-')}: must be >= 0")
    preset = _preset(args.preset)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    detector = detector_config(args, face_model=args.face_model)
    settings = {
        "preset": preset,  # by value: a custom preset is recorded in full
        "family": args.family,
        "ip_adapter_scale": args.ip_adapter_scale,
        "lora_scale": args.lora_scale,
        "steps": args.steps,
        "resolution": args.resolution,
        "id_image": str(id_image),
        "dtype": dtype,
    }
    # refused (or found done) before the model loads
    records, todo = plan_outputs(
        args,
        prompts,
        lambda im: f"{im.prompt_index:03d}_{im.image_index:02d}.png",
        settings=settings,
        models=_models(args, model),
    )
    if not todo:
        return 0
    quiet_libraries()
    identity = FaceIDEncoder(load_face_model(args.face_model), detector=detector)(
        id_image, name=f"--id-image {id_image}"
    )

    from ..pipelines.fastface_loading import load_fastface

    pipe = load_fastface(
        model,
        family=args.family,
        base=args.base,
        distilled=args.distilled,
        ip_adapter=args.ip_adapter,
        image_encoder=args.image_encoder,
        dtype=dtype,
        device=device,
    )
    pipe.set_progress_bar_config(disable=True)
    clip = pipe.encode_face_crop(identity.crop.to(device))
    bar = tqdm(todo, desc=f"fastface {pipe.family}/{preset.name}", unit="image", file=sys.stderr)
    open_output(args, records)  # the model loaded: only now is an old output replaced
    for planned, name in bar:
        image = pipe(
            planned.prompt,
            identity.arcface.to(device),
            clip_embeds=clip,
            preset=preset,
            num_inference_steps=args.steps,
            height=args.resolution,
            width=args.resolution,
            ip_adapter_scale=args.ip_adapter_scale,
            lora_scale=args.lora_scale,
            generator=seeded_generator(planned.seed, device),
        ).images[0]
        image = restored(image, args, id_image, prompt=planned.prompt, name=name)
        save_image(image, records.folder / name)
        records.add(
            name,
            prompt=planned.prompt,
            seed=planned.seed,
            size=image.size,
            resolved={"family": pipe.family},
        )
    print(f"{len(todo)} image(s) in {records.folder}")
    return 0
