"""The metric-worker protocol, worker side: standard library only.

A metric whose code pins old dependencies (Q-Align's remote code, ImageReward) runs in an
environment of its own. The harness starts ``ENV/bin/python <script> --weights W --device D``
and talks JSON, one object per line:

* the worker's first line: ``{"ready": true, "model": ...}``, or ``{"error": "..."}`` and exit 1;
* each request ``{"id": N, "image": PATH, "text": STR, "task": STR}`` gets
  ``{"id": N, "score": FLOAT}`` or ``{"id": N, "error": "..."}``;
* end of input ends the worker.

Everything the model library prints goes to standard error, never to the protocol's stream.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

# The worker loads only local files: a metric that would fetch from a hub fails instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:400]


def serve(
    load: Callable[[str, str], Any],
    score: Callable[[Any, dict[str, Any]], float],
    argv: list[str] | None = None,
) -> int:
    """Run the worker: ``load(weights, device) -> model`` once, then ``score(model, request)``
    for each request line. Returns the exit code."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    out = sys.stdout
    sys.stdout = sys.stderr  # the model library's prints go to stderr
    try:
        model = load(args.weights, args.device)
    except Exception as exc:  # noqa: BLE001 - reported to the harness, one line
        out.write(json.dumps({"error": f"loading {args.weights}: {_one_line(exc)}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True, "model": str(args.weights)}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            reply["score"] = float(score(model, request))
        except Exception as exc:  # noqa: BLE001 - one item's failure, not the worker's
            reply["error"] = _one_line(exc)
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0
