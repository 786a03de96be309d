"""``instantportrait generate --method fastface``: FastFace on a few-step SDXL.

Example::

    instantportrait generate --method fastface --id-image face.png --face-model w600k_r50.onnx \\
        --model hyper --preset fastface-am1 --prompt "a portrait in a garden" -o out/

Outputs ``NNN_MM.png`` (prompt NNN, image MM) and ``fastface.json`` (the settings and seeds).
"""

from __future__ import annotations

import argparse
import json
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
        "(or their folder), or an arcface_torch .pth/.safetensors",
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
    from ..pipelines.fastface_presets import fastface_preset

    if value in PRESET_NAMES:
        return fastface_preset(value)
    path = Path(value)
    if not path.is_file():
        raise InputError(
            f"--preset: one of {', '.join(PRESET_NAMES)} or a JSON file; got {value!r}"
        )
    try:
        return fastface_preset(json.loads(path.read_text()) | {"name": path.stem})
    except (ValueError, TypeError) as exc:
        raise InputError(f"--preset {path}: {exc}") from None


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
    from ..io import atomic_write, check_output, prepare_output, save_image
    from ..pipelines.faceid import FaceIDEncoder, load_face_model
    from .common import quiet_libraries, resolve_device, resolve_dtype, seeded_generator
    from .generate import prompts_of, restored, single_id_image

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
    quiet_libraries()
    identity = FaceIDEncoder(load_face_model(args.face_model))(
        id_image, name=f"--id-image {id_image}"
    )
    check_output(args.output, overwrite=args.overwrite)  # refused before the model loads

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
    jobs = [(i, j) for i in range(len(prompts)) for j in range(args.num_images_per_prompt)]
    bar = tqdm(jobs, desc=f"fastface {pipe.family}/{preset.name}", unit="image", file=sys.stderr)
    # the model loaded: only now is an old output replaced
    out_dir = prepare_output(args.output, overwrite=args.overwrite, kind="dir", create=True)
    records = []
    for n, (i, j) in enumerate(bar):
        seed = args.seed + n
        image = pipe(
            prompts[i],
            identity.arcface.to(device),
            clip_embeds=clip,
            preset=preset,
            num_inference_steps=args.steps,
            height=args.resolution,
            width=args.resolution,
            ip_adapter_scale=args.ip_adapter_scale,
            lora_scale=args.lora_scale,
            generator=seeded_generator(seed, device),
        ).images[0]
        image = restored(image, args, id_image, prompt=prompts[i])
        dest = out_dir / f"{i:03d}_{j:02d}.png"
        save_image(image, dest)
        records.append({"file": dest.name, "prompt": prompts[i], "seed": seed})
    settings = {
        "method": "fastface",
        "model": str(model),
        "family": pipe.family,
        "preset": preset.name,
        "ip_adapter_scale": args.ip_adapter_scale,
        "lora_scale": args.lora_scale,
        "steps": args.steps,
        "dtype": str(dtype).removeprefix("torch."),
        "id_image": str(id_image),
        "images": records,
    }
    text = json.dumps(settings, indent=2)
    atomic_write(out_dir / "fastface.json", lambda p: p.write_text(text, encoding="utf-8"))
    print(f"{len(records)} image(s) in {out_dir}")
    return 0
