"""The metric registry: :class:`Metric`, :class:`ModelSource`, :class:`ModelHub` and the
names the CLI accepts.

A :class:`Metric` names its models by key (``"clip-vit-h-14"``, ``"dlib"``, ``"lpips"``...).
A :class:`ModelHub` loads a model the first time a requested metric needs it, from the path
or Hub id the user gave (``--weights KEY=PATH``) or the model's default; a model that cannot
be loaded makes its metrics *unavailable* with one line saying what was looked for and what
to provide (:class:`MetricUnavailable`): never a crash, never a silent zero.

Scopes: ``item`` metrics score one output (face similarity, CLIP-T...); ``group`` metrics one
subject's outputs under all prompts (Intra-LPIPS); ``set`` metrics all outputs of a method
against a reference set (FID); ``method`` metrics the method itself (parameters, steps).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ...errors import InputError, first_line

__all__ = [
    "METRICS",
    "MODELS",
    "OFFLINE_METRICS",
    "TABLE1_ORDER",
    "Metric",
    "MetricUnavailable",
    "ModelHub",
    "ModelSource",
    "NotApplicable",
    "ordered",
    "metric_key",
    "register_metric",
    "register_model",
    "resolve_metric_names",
]

Scope = Literal["item", "group", "set", "method"]


class MetricUnavailable(Exception):
    """A metric cannot run here; the message says what was looked for and what to provide."""


class NotApplicable(Exception):
    """A metric does not apply to this item (e.g. FSC on a prompt without a style part)."""


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSource:
    """A model a metric needs.

    Attributes:
        key: its name on the command line (``--weights KEY=PATH``).
        description: what it is.
        default: the path or Hub id used when the user gives none (``None``: must be given,
            unless ``load_without_source``).
        provide: what the user should provide when it cannot be loaded.
        loader: ``loader(source, device) -> model``; raises on failure.
        load_without_source: call ``loader(None, device)`` when nothing is given (the loader
            has its own default, e.g. an environment variable or a packaged file).
    """

    key: str
    description: str
    default: str | None
    provide: str
    loader: Callable[[str | None, torch.device], Any]
    load_without_source: bool = False


MODELS: dict[str, ModelSource] = {}


def register_model(source: ModelSource) -> ModelSource:
    """Add (or replace) a model source in :data:`MODELS`."""
    MODELS[source.key] = source
    return source


def _object_digest(obj: Any) -> str:
    """A hash of a model object's parameters and buffers (or its type name)."""
    if isinstance(obj, torch.nn.Module):
        h = hashlib.sha1(type(obj).__qualname__.encode())
        for name, t in obj.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()[:16]
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def metric_key(metric: Metric, hub: ModelHub, template: str = "{prompt}") -> str:
    """A hash of everything that determines a metric's values besides the item: its name,
    its settings (:attr:`Metric.extra`), each model's identity and, for metrics reading the
    text template, the template (16 hex digits)."""
    data = {
        "metric": metric.name,
        "version": metric.version,
        "extra": metric.extra,
        "models": {k: hub.identity(k) for k in metric.models},
        "template": template if metric.uses_template else None,
    }
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _first_line(exc: BaseException) -> str:
    return first_line(exc, 300)


class ModelHub:
    """Loads the models of requested metrics lazily, once, and caches derived values.

    Args:
        weights: ``KEY -> path or Hub id`` (or ``KEY -> a ready model object``, e.g. a tiny
            random model in tests), overriding :attr:`ModelSource.default`.
        device: where the metric models run (default CPU); metrics run in float32.
    """

    def __init__(
        self, weights: dict[str, Any] | None = None, device: torch.device | str | None = None
    ) -> None:
        self.weights = dict(weights or {})
        unknown = sorted(
            k for k, v in self.weights.items() if k not in MODELS and isinstance(v, str)
        )
        if unknown:
            raise InputError(
                f"--weights: unknown model key {unknown[0]!r}; one of {', '.join(sorted(MODELS))}"
            )
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._models: dict[str, Any] = {}
        self._failures: dict[str, str] = {}
        self.cache: dict[Any, Any] = {}
        self._tokenizer = None
        self._identities: dict[str, dict[str, Any]] = {}

    def source(self, key: str) -> str | None:
        """The path or Hub id model ``key`` loads from (``None``: none given)."""
        value = self.weights.get(key, MODELS[key].default if key in MODELS else None)
        return value if isinstance(value, str) or value is None else f"<{type(value).__name__}>"

    def get(self, key: str) -> Any:
        """Model ``key``, loaded on first use; raises :class:`MetricUnavailable` with a reason."""
        if key in self._models:
            return self._models[key]
        if key in self._failures:
            raise MetricUnavailable(self._failures[key])
        given = self.weights.get(key)
        if given is not None and not isinstance(given, (str, os.PathLike)):
            self._models[key] = given
            return given
        if key not in MODELS:
            raise MetricUnavailable(f"model {key!r} is not registered")
        spec = MODELS[key]
        src = str(given) if given is not None else spec.default
        if src is None and not spec.load_without_source:
            reason = f"{key} ({spec.description}): no weights given; provide {spec.provide}"
            self._failures[key] = reason
            raise MetricUnavailable(reason)
        try:
            from ...model_sources import locate, looks_like_hub_id

            if src is not None and looks_like_hub_id(src):  # the cache, offline; one line if absent
                src = str(locate(src, f"--weights {key}", f"provide {spec.provide}"))
            model = spec.loader(src, self.device)
        except Exception as exc:  # noqa: BLE001 - any load failure makes the metric unavailable
            from ...errors import InstantPortraitError

            if isinstance(exc, InstantPortraitError):  # already says what to provide
                reason = f"{key} ({spec.description}): {_first_line(exc)}"
            else:
                offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
                reason = (
                    f"{key} ({spec.description}) could not be loaded from {src}{offline}: "
                    f"{_first_line(exc)}; provide {spec.provide}"
                )
            self._failures[key] = reason
            raise MetricUnavailable(reason) from None
        self._models[key] = model
        return model

    def tokenizer(self):
        """CLIP's BPE tokenizer (built offline; the same for OpenAI CLIP and OpenCLIP)."""
        if self._tokenizer is None:
            from ...components import clip_tokenizer

            self._tokenizer = clip_tokenizer()
        return self._tokenizer

    def check(self, metric: Metric) -> str | None:
        """``None`` when ``metric`` can run, else the reason it cannot (models loaded here)."""
        for module in metric.requires:
            try:
                __import__(module)
            except ImportError:
                return f"{metric.name}: python package {module!r} missing; {metric.install_hint}"
        for key in metric.models:
            try:
                self.get(key)
            except MetricUnavailable as exc:
                return str(exc)
        return None

    def identity(self, key: str) -> dict[str, Any]:
        """What identifies model ``key`` as loaded here (JSON-able), for result keys: a local
        path's files (relative path, size, modification time), a Hub id, the environment
        variable a loader falls back to, or a hash of a ready model object's parameters."""
        from ..methods import model_fingerprint

        if key in self._identities:
            return self._identities[key]
        given = self.weights.get(key)
        if given is not None and not isinstance(given, (str, os.PathLike)):
            self._identities[key] = {"object": _object_digest(given)}
            return self._identities[key]
        src = str(given) if given is not None else (MODELS[key].default if key in MODELS else None)
        env = f"INSTANTPORTRAIT_{key.upper().replace('-', '_')}_WEIGHTS"
        out: dict[str, Any] = {
            "key": key,
            "source": model_fingerprint(src, "config.json") if src else None,
        }
        if src is None and os.environ.get(env):
            out["env"] = model_fingerprint(os.environ[env], "config.json")
        self._identities[key] = out
        return out

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``cache[key]``, computed once."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: the key (``--metrics``, store, report).
        label: the report's column header.
        scope: ``item``, ``group``, ``set`` or ``method`` (see the module docstring).
        fn: item: ``fn(ctx) -> float`` (raise :class:`NotApplicable` to skip, any other
            exception records a failure; details go into ``ctx.detail``); group:
            ``fn(images (N,3,H,W), hub) -> float``; set: ``fn(outputs, references, hub) ->
            float`` or ``(float, detail)`` (PIL lists); method: ``fn(cost) -> float``.
        models: keys of :data:`MODELS` it needs.
        higher_is_better: the direction (``None``: no preferred direction).
        aggregate: how the report combines item values: ``mean`` (± std) or ``sum`` (a count).
        family: ``face``, ``text``, ``quality``, ``reference``, ``cost``.
        paper: where it is defined.
        requires: python modules it needs besides the models.
        install_hint: what to install when ``requires`` is missing.
        offline: computable with no user-provided weights (``--metrics offline``).
        extra: free-form settings of the metric (part of its result key).
        uses_template: reads the protocol's text template (CLIP-T, HPS): the template is
            part of its result key.
        on_generation_failure: the value recorded for an item whose output could not be
            generated (FFC: 1, the item counts as a failure and stays in the denominator);
            ``None``: no row.
        version: bump when the formula changes, so stored values are recomputed.
    """

    name: str
    label: str
    scope: Scope
    fn: Callable[..., float]
    models: tuple[str, ...] = ()
    higher_is_better: bool | None = True
    aggregate: Literal["mean", "sum"] = "mean"
    family: str = ""
    paper: str = ""
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    offline: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    uses_template: bool = False
    on_generation_failure: float | None = None
    version: int = 1


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add (or replace) a metric in :data:`METRICS`."""
    METRICS[metric.name] = metric
    return metric


#: The report's column order: InstantPortrait Table 1 first (face similarity, CLIP-T, HPS,
#: Q-Align quality/aesthetic, Intra-LPIPS, model size, inference steps), then the others.
TABLE1_ORDER = (
    "face_sim_facenet",
    "face_sim_arcface",
    "face_sim_dlib",
    "clip_t_vitg14",
    "clip_t_vith14",
    "clip_t_vitl14",
    "hps_v2",
    "qalign_quality",
    "qalign_aesthetic",
    "intra_lpips",
    "params",
    "steps",
    "ffc",
    "fsc",
    "fsc_paper",
    "clip_i",
    "dino",
    "lpips",
    "fid",
    "fd_dinov2",
    "imagereward",
    "laion_aesthetic",
)

#: Metrics computable here with no user-provided weights.
OFFLINE_METRICS = ("face_sim_dlib", "ffc", "params", "steps")


def resolve_metric_names(spec: str | Sequence[str]) -> list[str]:
    """Metric names from a comma list; ``all`` and ``offline`` expand; unknown names raise."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names: list[str] = []
    for item in items:
        if not item:
            continue
        expanded = (
            ordered(list(METRICS))
            if item == "all"
            else list(OFFLINE_METRICS)
            if item == "offline"
            else [item]
        )
        for name in expanded:
            if name not in METRICS:
                raise InputError(
                    f"--metrics: unknown metric {name!r}; one of all, offline, "
                    f"{', '.join(sorted(METRICS))}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise InputError("--metrics: no metric given")
    return names


def ordered(names: Sequence[str]) -> list[str]:
    """``names`` in the report's column order (:data:`TABLE1_ORDER`, then the rest)."""
    rank = {n: i for i, n in enumerate(TABLE1_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))
