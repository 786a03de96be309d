"""``instantportrait app``: the web UI and HTTP API (Gradio) for every method."""

from __future__ import annotations

import argparse

from .common import add_device_arguments
from .restore_option import add_codeformer_arguments, add_face_parser_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="start the web app and its HTTP API (needs the app extra)",
        description="Start the Gradio app. Models load once, on first use, from the folders or "
        "Hub ids given here; a method with no model says which option provides it. Bound to "
        "127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--edit-model", help="InstantPortrait editor (IPNet/IDE-Net) folder or Hub id")
    ff = p.add_argument_group("Generate tab (FastFace; as generate --method fastface)")
    ff.add_argument(
        "--fastface-model",
        help="hyper, lightning, lcm, turbo (SDXL base + that family's weights) or a folder of "
        "a few-step SDXL pipeline",
    )
    ff.add_argument(
        "--fastface-family",
        choices=("hyper", "lightning", "lcm", "turbo"),
        help="the family of a --fastface-model folder when it does not say",
    )
    ff.add_argument("--fastface-face-model", help="ArcFace model (.onnx / .pth / .safetensors)")
    ff.add_argument("--fastface-base", help="SDXL base, folder or Hub id")
    ff.add_argument("--fastface-distilled", help="the family's weights, folder or Hub id")
    ff.add_argument("--fastface-ip-adapter", help="FaceID-Plus-v2 adapter, folder or Hub id")
    ff.add_argument("--fastface-image-encoder", help="CLIP ViT-H/14 vision model")
    ff.add_argument("--fastface-resolution", type=int, help="image side (default: the family's)")
    fa = p.add_argument_group("Personalise tab (FaceA-Net)")
    fa.add_argument("--faceanet-base", help="SD-inpainting model, folder or Hub id (G_id)")
    fa.add_argument(
        "--faceanet-context-model",
        help="context model (hyper, lightning, lcm, turbo or an SDXL folder); without it a "
        "request repaints the context photo it uploads",
    )
    fa.add_argument(
        "--faceanet-tune-steps",
        type=int,
        default=20,
        help="tuning steps per person (default 20: a CPU demo; the paper uses 1000)",
    )
    fa.add_argument(
        "--faceanet-resolution", type=int, default=512, help="tuning crop side (default 512)"
    )
    p.add_argument(
        "--workdir",
        help="where tuned identities are kept (default: a new temporary folder)",
    )
    p.add_argument(
        "--fpga-model", help="Group tab: an FPGA pipeline folder or a merged RepControlNet"
    )
    rs = p.add_argument_group("Restore tab (DIIR)")
    rs.add_argument("--restore-model", help="a DIIR model folder")
    add_face_parser_argument(rs, prefix="restore-")
    add_codeformer_arguments(rs, prefix="restore-")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests run at once; the rest wait in order in the queue (default 1)",
    )
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..app import ModelRegistry, build_app
    from ..errors import InputError
    from .common import quiet_libraries, resolve_device, resolve_dtype
    from .restore_option import check_codeformer_arguments

    if not 1 <= args.port <= 65535:
        raise InputError(f"--port: {args.port}; between 1 and 65535")
    r = args.fastface_resolution
    if r is not None and (r < 32 or r % 8):
        raise InputError(f"--fastface-resolution: a multiple of 8, at least 32; got {r}")
    if args.faceanet_tune_steps < 1:
        raise InputError("--faceanet-tune-steps: must be at least 1")
    if args.faceanet_resolution < 8 or args.faceanet_resolution % 8:
        raise InputError(f"--faceanet-resolution: a multiple of 8; got {args.faceanet_resolution}")
    if args.concurrency < 1:
        raise InputError("--concurrency: must be at least 1")
    check_codeformer_arguments(args, prefix="restore-")
    quiet_libraries()
    device = resolve_device(args.device)
    registry = ModelRegistry(
        edit_model=args.edit_model,
        fastface_model=args.fastface_model,
        fastface={
            "family": args.fastface_family,
            "face_model": args.fastface_face_model,
            "base": args.fastface_base,
            "distilled": args.fastface_distilled,
            "ip_adapter": args.fastface_ip_adapter,
            "image_encoder": args.fastface_image_encoder,
        },
        fastface_resolution=args.fastface_resolution,
        faceanet_base=args.faceanet_base,
        faceanet_context_model=args.faceanet_context_model,
        faceanet={"tune_steps": args.faceanet_tune_steps, "resolution": args.faceanet_resolution},
        workdir=args.workdir,
        fpga_model=args.fpga_model,
        restore_model=args.restore_model,
        restore={
            "face_parser": args.restore_face_parser,
            "codeformer": args.restore_codeformer,
            "codeformer_fidelity": args.restore_codeformer_fidelity,
        },
        device=device,
        dtype=resolve_dtype(args.dtype, device),
    )
    registry.check()  # every model path, from configs only: a bad one is one line at start
    demo = build_app(registry, concurrency=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size="50mb")
    return 0
