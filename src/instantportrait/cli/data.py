"""``instantportrait data pack|check``: the pair dataset's tools."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="pair dataset tools: pack shards, check a dataset")
    cmds = p.add_subparsers(dest="data_command", required=True)
    pack = cmds.add_parser("pack", help="write a manifest folder as tar shards")
    pack.add_argument("source", help="a folder with pairs.jsonl (or shards)")
    pack.add_argument("output", help="the folder for shard-NNNNNN.tar files")
    pack.add_argument(
        "--shard-size", type=int, default=1000, help="examples per shard (default 1000)"
    )
    pack.set_defaults(func=run_pack)
    chk = cmds.add_parser("check", help="validate every row; report bad rows without stopping")
    chk.add_argument("dataset", help="a manifest folder or a folder of shards")
    chk.set_defaults(func=run_check)
    from .data_portraits import register_portraits

    register_portraits(cmds)


def run_pack(args: argparse.Namespace) -> int:
    from ..data.pairs import pack_shards

    for path in pack_shards(args.source, args.output, args.shard_size):
        print(path)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.pairs import iter_check, open_pair_source

    source = open_pair_source(args.dataset)
    bad = []
    for _, problem in tqdm(
        iter_check(source),
        total=len(source),
        desc="checking",
        unit="pair",
        file=sys.stderr,
        disable=len(source) < 50,
    ):
        if problem is not None:
            bad.append(problem)
            print(f"bad: {problem}", file=sys.stderr)
    print(f"{len(source)} pairs, {len(source) - len(bad)} good, {len(bad)} bad")
    return 0 if not bad else 2
