"""Sweeps: one method SPEC expanded into a method per setting value (FastFace Fig. 8).

``--sweep ip_adapter_scale=0.1,0.35,0.5`` (repeatable) turns every method whose kind has that
setting into one method per value; two sweeps give their product. ``--sweep fastface`` is
FastFace's grid (§5.2, Figs. 8 and 21): ``ip_adapter_scale`` in {0.1, 0.35, 0.5, 0.65, 0.8,
0.95} x ``lora_scale`` in {1, 0.5}, 12 methods per SPEC. The expanded methods share kind and
model, so the report joins them as one curve in the Pareto plot.
"""

from __future__ import annotations

import itertools
from typing import Any

from ..errors import InputError
from .methods import MethodSpec, _value, method_class

__all__ = ["FASTFACE_SWEEP", "expand_sweeps", "parse_sweep", "spec_text"]

#: FastFace's sweep (the Pareto fronts of Figs. 8 and 21).
FASTFACE_SWEEP: dict[str, tuple[float, ...]] = {
    "ip_adapter_scale": (0.1, 0.35, 0.5, 0.65, 0.8, 0.95),
    "lora_scale": (1.0, 0.5),
}
#: Short labels of swept settings in the expanded methods' names.
_SHORT = {"ip_adapter_scale": "ips", "lora_scale": "lora"}
_NAMED = {"fastface": FASTFACE_SWEEP}


def parse_sweep(text: str) -> dict[str, tuple[Any, ...]]:
    """``"KEY=V1,V2,..."`` -> ``{KEY: (V1, V2, ...)}``; a named grid (``fastface``) -> its
    settings."""
    text = text.strip()
    if text in _NAMED:
        return dict(_NAMED[text])
    key, eq, values = text.partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise InputError(f"--sweep {text!r}: expected KEY=V1,V2,... or one of {', '.join(_NAMED)}")
    parsed = tuple(_value(v.strip()) for v in values.split(",") if v.strip())
    if len(parsed) < 1:
        raise InputError(f"--sweep {text!r}: no values")
    if len(set(map(repr, parsed))) != len(parsed):
        raise InputError(f"--sweep {text!r}: a value is given twice")
    return {key: parsed}


def spec_text(kind: str, path: str | None, options: dict[str, Any]) -> str:
    """A SPEC string that :func:`~.methods.parse_method_spec` reads back to the same spec."""
    head = kind if path is None else f"{kind}:{path}" if "," not in path else kind
    parts = [head]
    if path is not None and "," in path:
        parts.append(f"path={path}")
    parts += [f"{k}={v}" for k, v in options.items()]
    return ",".join(parts)


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def expand_sweeps(
    methods: dict[str, MethodSpec], sweeps: dict[str, tuple[Any, ...]]
) -> dict[str, MethodSpec]:
    """Every method whose kind knows a swept setting becomes one method per combination of
    values (named ``NAME-ips0.35-lora0.5``); the others are kept as given. A swept setting no
    method knows is an error (one line)."""
    if not sweeps:
        return dict(methods)
    used: set[str] = set()
    out: dict[str, MethodSpec] = {}
    for name, spec in methods.items():
        known = set(method_class(spec.kind).options)
        keys = [k for k in sweeps if k in known]
        if not keys:
            out[name] = spec
            continue
        used.update(keys)
        for combo in itertools.product(*(sweeps[k] for k in keys)):
            options = dict(spec.options)
            options.update(zip(keys, combo, strict=True))
            suffix = "-".join(
                f"{_SHORT.get(k, k)}{_label(v)}" for k, v in zip(keys, combo, strict=True)
            )
            new_name = f"{name}-{suffix}"
            if new_name in out or new_name in methods:
                raise InputError(f"--sweep: the method name {new_name!r} would be used twice")
            out[new_name] = MethodSpec(
                spec.kind, spec.path, options, spec_text(spec.kind, spec.path, options)
            )
    unknown = [k for k in sweeps if k not in used]
    if unknown:
        raise InputError(f"--sweep {unknown[0]}: no --method has that setting")
    return out
