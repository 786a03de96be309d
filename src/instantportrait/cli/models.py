"""``instantportrait models list|check``: the default model sources, and what a model is.

``list`` prints the registry (:mod:`instantportrait.model_sources`): source, licence,
commercial use, size. ``check PATH --for USE`` reads only configs and tensor headers
(:mod:`instantportrait.model_check`) and says what PATH is and whether it fits USE.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..model_check import USE_ALIASES, USES
    from ..model_sources import METHODS

    p = sub.add_parser(
        "models",
        help="list the default model sources (licences, sizes) or check what a model is",
        description="List the models the commands use by default, with their sources, "
        "licences and sizes, or check what a folder, file or Hub id is and whether it fits "
        "a use, reading only configs and tensor headers (never the weights).",
    )
    actions = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    lst = actions.add_parser("list", help="the default model sources")
    lst.add_argument("--for", dest="method", choices=METHODS, help="only this method's models")
    lst.set_defaults(func=run_list)
    chk = actions.add_parser("check", help="what a model folder, file or Hub id is")
    chk.add_argument("path", help="a local folder or file, or a Hub id (read from the cache)")
    chk.add_argument(
        "--for",
        dest="use",
        choices=sorted([*USES, *USE_ALIASES]),
        help="the use to check it for (without it: only say what it is)",
    )
    chk.set_defaults(func=run_check)


def run_list(args: argparse.Namespace) -> int:
    from ..model_sources import sources_for

    rows = [("name", "source", "licence", "commercial", "size")]
    rows += [(s.name, s.source, s.licence, s.commercial, s.size) for s in sources_for(args.method)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[-1])
    notes = [s for s in sources_for(args.method) if s.note]
    if notes:
        print()
        for s in notes:
            print(f"{s.name}: {s.note}")
    print("\nget a Hub source with `hf download REPO`; pass its folder or the Hub id")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..model_check import check_model, identify
    from ..model_sources import locate

    if args.use is None:
        where = locate(args.path, "")
        if isinstance(where, str):
            print(f"{args.path}: a Hub id that is not cached (pass --for to read its configs)")
            return 0
        print(f"{args.path}: {identify(where).description}")
        return 0
    ident = check_model(args.path, args.use, "")
    print(f"{args.path}: {ident.description}; fits {args.use}")
    return 0
