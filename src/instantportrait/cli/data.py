"""``instantportrait data prompts|generate|pack|check``: the pair dataset's tools (and the
portrait dataset's ``build-portraits|pack-portraits``, :mod:`.data_portraits`)."""

from __future__ import annotations

import argparse
import sys

from .common import list_subcommands


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="pair dataset tools: prompts, generate pairs, pack shards, check"
    )
    cmds = p.add_subparsers(dest="data_command", required=True)

    pr = cmds.add_parser(
        "prompts",
        help="write identity/instruction/target prompt rows (JSONL), streaming, by seed",
    )
    pr.add_argument("-o", "--output", required=True, help="the prompts JSONL file to write")
    pr.add_argument("--num", type=int, required=True, help="number of rows")
    pr.add_argument("--seed", type=int, default=0, help="seed (default 0): same seed, same rows")
    pr.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="add the entries of FILE (one a line, optional '| weight') to list NAME "
        "(age, gender, ethnicity, skin_tone, hair, glasses, categories or a category); "
        "repeatable",
    )
    pr.add_argument(
        "--replace-list",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="replace list NAME by the entries of FILE; repeatable",
    )
    pr.add_argument("--overwrite", action="store_true", help="replace an existing file")
    pr.set_defaults(func=run_prompts)

    gen = cmds.add_parser(
        "generate",
        help="generate pairs: target first (SDXL), input from it (IP-Adapter + canny "
        "ControlNet), filtered, into resumable shards",
    )
    gen.add_argument("--prompts", required=True, help="a prompts JSONL file (`data prompts`)")
    gen.add_argument("-o", "--output", required=True, help="the dataset folder")
    m = gen.add_argument_group("models (a bundle folder, or each by path / Hub id)")
    m.add_argument("--models", help="a folder with bundle.json (`init-tiny --kind dataset`)")
    m.add_argument("--target-model", help="SDXL text-to-image model for the targets")
    m.add_argument("--input-model", help="SDXL model for the inputs (default: --target-model)")
    m.add_argument("--controlnet", help="canny ControlNet (diffusers ControlNetModel)")
    m.add_argument("--ip-adapter", help="IP-Adapter repository or folder")
    m.add_argument("--ip-adapter-subfolder", default="", help="its subfolder (e.g. sdxl_models)")
    m.add_argument(
        "--ip-adapter-weight",
        default="ip-adapter_sdxl.safetensors",
        help="its weight file (default ip-adapter_sdxl.safetensors)",
    )
    m.add_argument(
        "--image-encoder",
        default="image_encoder",
        help="the IP-Adapter's CLIP image encoder folder, relative to the subfolder or a path "
        "with a '/' (default image_encoder)",
    )
    g = gen.add_argument_group("generation")
    g.add_argument(
        "--resolution",
        default="576x1024",
        help="WIDTHxHEIGHT of both images (default 576x1024: the paper's 1024x576 training "
        "size, portrait)",
    )
    g.add_argument("--steps", type=int, default=30, help="steps of both models (default 30)")
    g.add_argument("--target-steps", type=int, help="target model steps (default --steps)")
    g.add_argument("--input-steps", type=int, help="input model steps (default --steps)")
    g.add_argument("--guidance", type=float, default=5.0, help="CFG scale of both (default 5)")
    g.add_argument("--target-guidance", type=float, help="(default --guidance)")
    g.add_argument("--input-guidance", type=float, help="(default --guidance)")
    g.add_argument("--controlnet-scale", type=float, default=0.6, help="(default 0.6)")
    g.add_argument("--ip-adapter-scale", type=float, default=0.6, help="(default 0.6)")
    g.add_argument("--negative-prompt", default="", help="negative prompt of both models")
    g.add_argument("--seed", type=int, default=0, help="seed; row r draws from (seed, r)")
    g.add_argument("--batch-size", type=int, default=1, help="rows per pipeline call")
    g.add_argument("--limit", type=int, help="use only the first N prompt rows")
    g.add_argument("--shard-size", type=int, default=1000, help="rows per shard (default 1000)")
    g.add_argument(
        "--image-format", default="jpg", choices=["jpg", "png", "webp"], help="(default jpg, q95)"
    )
    g.add_argument(
        "--memory",
        default="in-turn",
        choices=["in-turn", "together", "model-offload"],
        help="in-turn: load the target then the input pipeline per shard (default); "
        "together: keep both; model-offload: diffusers' CPU offload (CUDA)",
    )
    g.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda...")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="auto: float16 on CUDA, float32 on CPU",
    )
    f = gen.add_argument_group("filters")
    f.add_argument("--no-filter", action="store_true", help="keep every pair (tiny models)")
    f.add_argument(
        "--identity-threshold",
        type=float,
        default=0.6,
        help="same person below this distance (dlib: Euclidean, 0.6; others: 1 - cos)",
    )
    f.add_argument("--embedder", default="dlib", help="dlib (default), arcface, facenet")
    f.add_argument("--embedder-weights", help="the weight file of arcface / facenet")
    from .detector_option import add_detector_arguments

    add_detector_arguments(f)
    f.add_argument("--min-face-fraction", type=float, default=0.08, help="(default 0.08)")
    f.add_argument("--min-sharpness", type=float, default=20.0, help="(default 20)")
    f.add_argument(
        "--filter-workers",
        type=int,
        default=0,
        help="filter in this many worker processes while the next pairs are drawn (default 0: "
        "inline; on a GPU the inline filters leave it idle ~1 s a pair)",
    )
    gen.add_argument(
        "--overwrite", action="store_true", help="replace the folder (default: resume it)"
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=run_generate)

    pack = cmds.add_parser("pack", help="write a manifest folder as tar shards")
    pack.add_argument("source", help="a folder with pairs.jsonl (or shards)")
    pack.add_argument("output", help="the folder for shard-NNNNNN.tar files")
    pack.add_argument(
        "--shard-size", type=int, default=1000, help="examples per shard (default 1000)"
    )
    pack.add_argument(
        "--overwrite", action="store_true", help="replace the output folder and its shards"
    )
    pack.set_defaults(func=run_pack)
    chk = cmds.add_parser(
        "check",
        help="validate every row of a pair or FPGA portrait dataset; report bad rows without "
        "stopping",
    )
    chk.add_argument(
        "dataset",
        help="a manifest folder or a folder of shards (pairs, or portraits: build-portraits, "
        "pack-portraits)",
    )
    chk.add_argument(
        "--faces",
        action="store_true",
        help="also count inputs that show no face, as training decides it with the same "
        "--detector (default dlib's HOG; rows with landmarks are trusted)",
    )
    chk.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="with --faces: long side inputs are resized to before detection, the training "
        "resolution (default 512; small faces are missed at small sizes)",
    )
    add_detector_arguments(chk.add_argument_group("with --faces"))
    chk.set_defaults(func=run_check)
    from .data_portraits import register_portraits

    register_portraits(cmds)
    list_subcommands(sub, "data", "dataset tools (pairs, FPGA portraits)")


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    from ..errors import InputError

    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"{flag}: expected NAME=FILE, got {item!r}")
        out.append((name, path))
    return out


def run_prompts(args: argparse.Namespace) -> int:
    from ..data.prompts import PromptConfig, write_prompts
    from ..errors import InputError
    from ..writer import prepare_output

    if args.num < 1:
        raise InputError(f"--num: must be at least 1, got {args.num}")
    extend: dict[str, list[str]] = {}
    for name, path in _pairs(args.list, "--list"):
        extend.setdefault(name, []).append(path)
    config = PromptConfig.build(extend, dict(_pairs(args.replace_list, "--replace-list")))
    prepare_output(args.output, overwrite=args.overwrite, kind="file")
    write_prompts(args.output, args.num, args.seed, config, progress=args.num >= 100_000)
    print(f"{args.output}: {args.num} rows (seed {args.seed})")
    return 0


def _model_paths(args: argparse.Namespace):
    from ..data.models import ModelPaths
    from ..errors import InputError

    if args.models:
        if args.target_model or args.controlnet or args.ip_adapter:
            raise InputError("--models: give a bundle or the models one by one, not both")
        return ModelPaths.from_bundle(args.models)
    missing = [
        flag
        for flag, value in (
            ("--target-model", args.target_model),
            ("--controlnet", args.controlnet),
            ("--ip-adapter", args.ip_adapter),
        )
        if not value
    ]
    if missing:
        raise InputError(f"data generate: missing {', '.join(missing)} (or pass --models DIR)")
    return ModelPaths(
        target_model=args.target_model,
        input_model=args.input_model or args.target_model,
        controlnet=args.controlnet,
        ip_adapter=args.ip_adapter,
        ip_adapter_subfolder=args.ip_adapter_subfolder,
        ip_adapter_weight=args.ip_adapter_weight,
        image_encoder_folder=args.image_encoder,
    )


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from ..data.filters import FilterConfig
    from ..data.generation import GenerationJob, distributed_rank, summary_table
    from ..data.models import DiffusersBackend
    from ..data.pair_drawing import GenerationSettings, parse_resolution
    from ..errors import InputError
    from .common import quiet_libraries
    from .detector_option import detector_config

    quiet_libraries()
    width, height = parse_resolution(args.resolution)
    settings = GenerationSettings(
        width=width,
        height=height,
        target_steps=args.target_steps or args.steps,
        input_steps=args.input_steps or args.steps,
        target_guidance=args.guidance if args.target_guidance is None else args.target_guidance,
        input_guidance=args.guidance if args.input_guidance is None else args.input_guidance,
        controlnet_scale=args.controlnet_scale,
        ip_adapter_scale=args.ip_adapter_scale,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        batch_size=args.batch_size,
        image_format=args.image_format,
    )
    filters = FilterConfig(
        enabled=not args.no_filter,
        identity_threshold=args.identity_threshold,
        embedder=args.embedder,
        embedder_weights=args.embedder_weights,
        min_face_fraction=args.min_face_fraction,
        min_sharpness=args.min_sharpness,
        detector=detector_config(args).spec,
    )
    paths = _model_paths(args)
    paths.check()
    rank, world, dist_device = distributed_rank()
    if dist_device is not None:
        device = dist_device
    elif args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise InputError(f"--device: unknown device {args.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA device here")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if args.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = dtypes[args.dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise InputError("--dtype float16: not supported on CPU (use float32 or bfloat16)")
    backend = DiffusersBackend(paths, settings, device, dtype, args.memory)
    job = GenerationJob(
        args.prompts,
        args.output,
        backend,
        settings,
        filters,
        shard_size=args.shard_size,
        limit=args.limit,
        rank=rank,
        world_size=world,
        describe={**paths.to_dict(), "dtype": str(dtype).replace("torch.", "")},
        filter_workers=args.filter_workers,
    )
    if args.overwrite and world > 1:
        raise InputError(
            "--overwrite: not under a multi-process launch (the processes would race to remove "
            "the folder); remove it first, or run without --overwrite to resume"
        )
    job.prepare(overwrite=args.overwrite)
    manifest = job.run(progress=not args.quiet)
    if manifest is None:
        print(f"rank {rank}: its shards are done; others are still running")
        return 0
    print(summary_table(manifest))
    print(f"{args.output}: {manifest['pairs']} pairs in {len(manifest['shards'])} shards")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ..data.pairs import pack_shards

    for path in pack_shards(args.source, args.output, args.shard_size, overwrite=args.overwrite):
        print(path)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.pairs import iter_check, open_pair_source
    from ..data.portraits import is_portrait_dataset, iter_check_portraits, open_portrait_source

    portraits = is_portrait_dataset(args.dataset)
    detector = faces_detector(args, load=not portraits)  # portrait rows carry their points
    if portraits:
        source = open_portrait_source(args.dataset, strict=False)
        rows, unit, checks = "portraits", "row", iter_check_portraits(source)
    else:
        source = open_pair_source(args.dataset, strict=False)
        rows, unit, checks = "pairs", "pair", iter_check(source)
    problems = list(getattr(source, "problems", []))
    for problem in problems:
        print(f"bad: {problem}", file=sys.stderr)
    bad = len(problems)
    for _, problem in tqdm(
        checks,
        total=len(source),
        desc="checking",
        unit=unit,
        file=sys.stderr,
        disable=len(source) < 50,
    ):
        if problem is not None:
            bad += 1
            print(f"bad: {problem}", file=sys.stderr)
    total = len(source) + len(problems)
    print(f"{total} {rows}, {total - bad} good, {bad} bad")
    if args.faces and portraits:
        print("--faces: portrait rows carry their landmarks (every kept row shows a face)")
    elif args.faces:
        from ..data.dataset import count_faces

        counted = count_faces(
            source, resolution=args.resolution, progress=len(source) >= 50, detector=detector
        )
        n, total = len(counted.faceless), counted.total
        share = 100.0 * n / total if total else 0.0
        print(
            f"{n} of {total} inputs show no face ({share:.1f}%) with detector "
            f"{detector.describe()}: the identity loss skips them"
        )
    return 0 if not bad else 2


def faces_detector(args: argparse.Namespace, load: bool):
    """``data check --faces``'s detector (``None`` without ``--faces``), its model loaded when
    ``load``, so a wrong model file is one line before any row is read."""
    from ..errors import InputError
    from .detector_option import detector_config

    if not args.faces:
        if args.detector is not None or args.detector_weights is not None:
            raise InputError("--detector, --detector-weights: only with --faces")
        return None
    config = detector_config(args)
    if load:
        from ..faces.detect import load_detector

        load_detector(config)
    return config
