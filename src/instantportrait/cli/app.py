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
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); any other needs sign-in (--auth, --auth-file) "
        "or --public-without-auth",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ac = p.add_argument_group("Sign-in (the page, the HTTP API and gradio_client alike)")
    ac.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="USER:PASSWORD",
        help="a user who may sign in (repeatable); the password is hashed at start",
    )
    ac.add_argument(
        "--auth-file",
        metavar="FILE",
        help="users who may sign in: one user:hash a line (write them with --add-user)",
    )
    ac.add_argument(
        "--add-user",
        metavar="USER",
        help="with --auth-file: ask for USER's password (from stdin when not a terminal), "
        "write its scrypt hash into the file, and exit",
    )
    ac.add_argument(
        "--sign-in-failures",
        type=int,
        default=5,
        metavar="N",
        help="failed sign-ins of one user name, within --sign-in-window, that pause its "
        "sign-in for --sign-in-lockout (default 5; unknown names are counted alike)",
    )
    ac.add_argument(
        "--sign-in-failures-per-address",
        type=int,
        default=20,
        metavar="N",
        help="failed sign-ins from one client address (any names) that pause that address "
        "(default 20; 0: off)",
    )
    ac.add_argument(
        "--sign-in-window",
        type=float,
        default=15,
        metavar="MINUTES",
        help="minutes over which failures are counted (default 15)",
    )
    ac.add_argument(
        "--sign-in-lockout",
        type=float,
        default=15,
        metavar="MINUTES",
        help="minutes a paused user name or address stays paused (default 15)",
    )
    ac.add_argument(
        "--public-without-auth",
        action="store_true",
        help="serve a non-loopback --host with no sign-in (anyone who reaches it may use it)",
    )
    st = p.add_argument_group("What is kept, and limits")
    st.add_argument(
        "--keep-photos",
        action="store_true",
        help="keep the photos a tuning used beside its identity (default: deleted when tuning "
        "ends)",
    )
    st.add_argument(
        "--retention",
        type=float,
        metavar="HOURS",
        help="delete tuned identities older than HOURS (checked at start and hourly; default: "
        "kept until their owner deletes them)",
    )
    st.add_argument(
        "--max-upload-mb", type=float, default=50, help="largest upload in MB (default 50)"
    )
    st.add_argument(
        "--max-identities",
        type=int,
        default=10,
        help="tuned identities one user may keep (default 10)",
    )
    st.add_argument(
        "--max-tuning",
        type=int,
        default=1,
        help="tuning jobs one user may run at once (default 1)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests run at once; the rest wait in order in the queue (default 1)",
    )
    add_device_arguments(p)
    p.set_defaults(func=run)


def add_user(args: argparse.Namespace) -> int:
    """``--auth-file FILE --add-user USER``: ask for the password, write its hash, exit."""
    import getpass
    import sys

    from ..app.access import write_auth_user
    from ..errors import InputError

    if not args.auth_file:
        raise InputError("--add-user: give the file to write with --auth-file FILE")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.add_user}: ")
        if getpass.getpass("again: ") != password:
            raise InputError("--add-user: the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise InputError("--add-user: empty password")
    new = write_auth_user(args.auth_file, args.add_user, password)
    print(f"{args.add_user}: {'added to' if new else 'password changed in'} {args.auth_file}")
    return 0


def credentials(args: argparse.Namespace):
    """The sign-in users of ``--auth`` and ``--auth-file`` with the ``--sign-in-*`` limits
    (``None``: sign-in off)."""
    from ..app.access import Credentials, parse_auth_pair, read_auth_file
    from ..app.sign_in_limit import SignInLimits, SignInThrottle

    limits = SignInLimits(  # checked there: one line naming the setting
        failures=args.sign_in_failures,
        window=60.0 * args.sign_in_window,
        lockout=60.0 * args.sign_in_lockout,
        address_failures=args.sign_in_failures_per_address,
    )
    plain = [parse_auth_pair(pair) for pair in args.auth]
    hashes = read_auth_file(args.auth_file) if args.auth_file else {}
    if not plain and not hashes:
        return None
    return Credentials(hashes, plain, throttle=SignInThrottle(limits))


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port another program already listens on."""
    import socket

    from ..errors import InputError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"--port {port}: cannot listen on {host} ({exc.strerror or exc}); another "
                "program may use it: pick another --port"
            ) from None


def run(args: argparse.Namespace) -> int:
    from ..app.access import check_exposure
    from ..errors import InputError

    if args.add_user:
        return add_user(args)
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port: {args.port}; between 1 and 65535")
    if args.retention is not None and not args.retention > 0:
        raise InputError(f"--retention: {args.retention} hours; must be positive")
    if not args.max_upload_mb > 0:
        raise InputError(f"--max-upload-mb: {args.max_upload_mb}; must be positive")
    if args.max_identities < 1 or args.max_tuning < 1:
        raise InputError("--max-identities and --max-tuning: at least 1")
    users = credentials(args)
    check_exposure(
        args.host, signed_in=users is not None, public_without_auth=args.public_without_auth
    )
    return serve(args, users)


def serve(args: argparse.Namespace, users) -> int:
    """Check the rest of the options, build the app and serve it until interrupted."""
    from ..app import ModelRegistry, build_app
    from ..app.identities import RetentionSweeper
    from ..app.serving import sign_in_options
    from ..errors import InputError
    from .common import quiet_libraries, resolve_device, resolve_dtype
    from .restore_option import check_codeformer_arguments

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
    check_port_free(args.host, args.port)
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
        faceanet={
            "tune_steps": args.faceanet_tune_steps,
            "resolution": args.faceanet_resolution,
            "keep_photos": args.keep_photos,
            "max_identities": args.max_identities,
            "max_tuning": args.max_tuning,
        },
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
    registry.check_sources()  # each model source checked without loading weights
    log_one_line_per_request()
    if args.retention is not None:
        RetentionSweeper(registry.identities, args.retention).start()
    for method, line in registry.status().items():
        print(f"{method}: {line}")
    if users is None and args.public_without_auth:
        print(f"--public-without-auth: serving {args.host} with no sign-in; anyone who reaches "
              "it can use the app")  # fmt: skip
    elif users is not None:
        print(f"sign-in: {len(users)} user(s); {users.throttle.limits.describe()}")
    print(f"identities kept in {registry.identities.root}"
          + (f", deleted after {args.retention:g} h" if args.retention else ""))  # fmt: skip
    demo = build_app(registry, concurrency=args.concurrency)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=int(args.max_upload_mb * 1_000_000),
            **sign_in_options(users),
        )
    except OSError as exc:  # the port taken between the check and the launch
        raise InputError(f"--port {args.port}: cannot listen on {args.host} ({exc})") from None
    return 0


def log_one_line_per_request() -> None:
    """The app's log (a refused request, a failed one, retention) to stderr, a line each."""
    import logging

    logger = logging.getLogger("instantportrait.app")
    if any(getattr(h, "_instantportrait_app", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler._instantportrait_app = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
