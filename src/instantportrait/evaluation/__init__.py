"""The evaluation harness: one resumable runner, a metric registry, protocols and reports.

``instantportrait evaluate`` (or :func:`evaluate` from Python) expands subjects x prompts x
seeds x methods, generates each output once, scores it with every requested metric and keeps
every row in ``OUT/results.sqlite``, keyed by everything that determines it; then writes
``report.md``, ``report.csv``, ``pareto.png`` and ``contact_sheet.png`` for the current run.
A subject (:mod:`.items`) holds one or more identities with tuning and held-out photos, an
optional condition and references; method kinds are registered in
:data:`.methods.METHOD_KINDS`. Names are imported on first use, so importing this package
loads no model and no heavy library. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METRICS": "metrics",
    "MODELS": "metrics",
    "ItemContext": "metrics",
    "Metric": "metrics",
    "MetricUnavailable": "metrics",
    "ModelHub": "metrics",
    "ModelSource": "metrics",
    "register_metric": "metrics",
    "register_model": "metrics",
    "resolve_metric_names": "metrics",
    "FACE_MATCHERS": "metrics",
    "register_face_matcher": "metrics",
    "METHOD_KINDS": "methods",
    "Identity": "items",
    "Subject": "items",
    "load_subjects": "items",
    "subjects_from_files": "items",
    "Method": "methods",
    "MethodSpec": "methods",
    "build_method": "methods",
    "parse_method_spec": "methods",
    "register_method": "methods",
    "Prompt": "protocols",
    "Protocol": "protocols",
    "list_protocols": "protocols",
    "load_protocol": "protocols",
    "read_prompts": "protocols",
    "ResultStore": "store",
    "EvaluationConfig": "runner",
    "Evaluator": "runner",
    "RunSummary": "runner",
    "evaluate": "runner",
    "summarize": "report",
    "write_report": "report",
    "LPIPS": "lpips",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
