"""``instantportrait app``: the web UI and HTTP API (Gradio) for every method."""

from __future__ import annotations

import argparse

from .common import add_device_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="start the web app and its HTTP API (needs the app extra)",
        description="Start the Gradio app. Models load once, on first use, from the folders or "
        "Hub ids given here; a method with no model says which option provides it. Bound to "
        "127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--edit-model", help="InstantPortrait editor (IPNet/IDE-Net) folder or Hub id")
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

    if not 1 <= args.port <= 65535:
        raise InputError(f"--port: {args.port}; between 1 and 65535")
    if args.concurrency < 1:
        raise InputError("--concurrency: must be at least 1")
    quiet_libraries()
    device = resolve_device(args.device)
    registry = ModelRegistry(
        edit_model=args.edit_model, device=device, dtype=resolve_dtype(args.dtype, device)
    )
    demo = build_app(registry, concurrency=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size="50mb")
    return 0
