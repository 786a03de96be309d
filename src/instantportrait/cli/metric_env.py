"""``instantportrait metric-env``: the environments of metrics that pin old dependencies.

``create NAME`` builds Q-Align's or ImageReward's own virtual environment (and stores its
model); ``check NAME`` starts its worker and scores one image, to see it work before a long
evaluation. Scoring itself happens in ``evaluate`` (the harness drives the worker).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.metric_envs import ENVS

    p = sub.add_parser(
        "metric-env",
        help="create or check the own environment of Q-Align / ImageReward (old pins)",
        description=__doc__.split("\n\n")[1],
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", help="build the environment (needs PyPI and the Hub)")
    c.add_argument("name", choices=sorted(ENVS))
    c.add_argument("--no-download", action="store_true", help="do not store the model")
    c.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    c.set_defaults(func=create)
    k = verbs.add_parser("check", help="start the worker and score one grey image")
    k.add_argument("name", choices=sorted(ENVS))
    k.add_argument("--weights", default=None, help="what the worker loads (default: stored)")
    k.add_argument("--device", default="cpu")
    k.set_defaults(func=check)


def create(args: argparse.Namespace) -> int:
    from ..evaluation.metric_envs import create_env, env_dir

    target = create_env(args.name, download=not args.no_download, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"{args.name}: environment ready at {target}")
    elif env_dir(args.name).exists():
        print(f"(exists: {target})")
    return 0


def check(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..evaluation.metric_worker import MetricWorker
    from ..evaluation.metrics import MODELS

    key = args.name
    weights = args.weights or MODELS[key].default
    worker = MetricWorker(key, weights, args.device)
    try:
        value = worker.score(
            Image.new("RGB", (224, 224), (128, 128, 128)), "a grey square", "quality"
        )
    finally:
        worker.close()
    print(f"{key}: worker ready ({weights}); a grey 224x224 image scores {value:.4f}")
    return 0
