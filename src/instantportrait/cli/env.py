"""``instantportrait env``: versions, device and optional parts, for bug reports."""

from __future__ import annotations

import argparse

from ..environment import environment_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="print versions, the device and which optional parts exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = environment_report()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0
