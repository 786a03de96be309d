"""Method metrics: model size and inference steps (InstantPortrait Table 1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .registry import Metric, NotApplicable, register_metric

__all__ = ["cost_field"]


def cost_field(field_name: str) -> Callable[[dict[str, Any]], float]:
    """The method metric reading ``field_name`` of :meth:`Method.cost`."""

    def fn(cost: dict[str, Any]) -> float:
        value = cost.get(field_name)
        if value is None:
            raise NotApplicable(f"the method does not report its {field_name}")
        return float(value)

    return fn


register_metric(
    Metric(
        "params",
        "Model size",
        "method",
        cost_field("params"),
        higher_is_better=False,
        family="cost",
        paper="InstantPortrait Table 1 'Model Size': parameters of the method's networks",
        offline=True,
    )
)
register_metric(
    Metric(
        "steps",
        "Inference steps",
        "method",
        cost_field("steps"),
        higher_is_better=False,
        family="cost",
        paper="InstantPortrait Table 1 'Inference Step': network passes per output",
        offline=True,
    )
)
