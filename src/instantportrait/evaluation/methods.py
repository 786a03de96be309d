"""Methods under evaluation: a SPEC string parsed into something that turns (portrait, prompt,
seed) into an output image.

A SPEC is ``KIND[:PATH][,key=value...]``, e.g. ``edit:runs/ipnet/final,steps=1,iterations=2``:
the method kind, an optional model path (or Hub id), then settings (ints, floats, ``true``/
``false`` and strings are recognised). On the command line a method is ``NAME=SPEC``; the name
labels its rows in the store and the report.

Kinds:

* ``edit`` (:class:`EditMethod`): :class:`~instantportrait.pipelines.InstantPortraitPipeline`
  (IPNet, IDE-Net, any InstructPix2Pix checkpoint). Settings: ``steps``, ``iterations``,
  ``guidance_scale``, ``image_guidance_scale``, ``resolution``, ``timestep``, ``dtype``.
* ``folder`` (:class:`FolderMethod`): outputs made elsewhere, read from
  ``PATH/{face}/{prompt_index:03d}_s{seed}.png`` (``pattern=`` changes it; fields ``face``,
  ``prompt_index``, ``prompt_hash``, ``seed``). Settings ``params``/``steps`` give its cost.
* ``identity``: the input unchanged (a reference row: face similarity 1).

Methods that are not written yet register by name: add a line to :data:`METHOD_MODULES`
(``kind -> "module:Class"``, imported on first use) or decorate a class with
:func:`register_method`. A class implements :class:`Method`: ``generate(image, prompt,
seed) -> PIL.Image``, and optionally ``cost()`` (parameters, steps) and ``close()``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InputError

__all__ = [
    "METHOD_MODULES",
    "EditMethod",
    "FolderMethod",
    "IdentityMethod",
    "Method",
    "MethodSpec",
    "build_method",
    "method_class",
    "parse_method_arg",
    "parse_method_spec",
    "register_method",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method SPEC: ``kind``, optional ``path`` and ``options``; ``text`` as given."""

    kind: str
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        """An option's value, or ``default``."""
        return self.options.get(key, default)


def parse_method_spec(text: str) -> MethodSpec:
    """``"edit:PATH,steps=1,iterations=2"`` -> ``MethodSpec("edit", "PATH", {...})``.

    The first comma-separated part after ``KIND:`` without ``=`` is the path. Paths holding a
    comma can be given as ``path=...``.
    """
    text = text.strip()
    if not text:
        raise InputError("method spec: empty (expected KIND[:PATH][,key=value...])")
    head, _, rest = text.partition(",")
    kind, colon, first = head.partition(":")
    kind = kind.strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", kind):
        raise InputError(f"method spec {text!r}: bad kind {kind!r} (expected KIND[:PATH],...)")
    parts = ([first] if colon else []) + ([p for p in rest.split(",")] if rest else [])
    path: str | None = None
    options: dict[str, Any] = {}
    for i, part in enumerate(parts):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            if i == 0 and colon and path is None:
                path = part
                continue
            raise InputError(f"method spec {text!r}: {part!r} is not key=value")
        key, _, value = part.partition("=")
        key = key.strip()
        if not key.isidentifier():
            raise InputError(f"method spec {text!r}: bad setting name {key!r}")
        if key == "path":
            path = value.strip()
        else:
            options[key] = _value(value.strip())
    return MethodSpec(kind.lower(), path, options, text)


def parse_method_arg(text: str) -> tuple[str, MethodSpec]:
    """``"NAME=SPEC"`` (the CLI's ``--method``) -> ``(name, spec)``; ``SPEC`` alone is named
    after its kind and settings."""
    name, eq, spec = text.partition("=")
    if eq and ":" not in name and "," not in name:
        name = name.strip()
        if not _NAME.match(name):
            raise InputError(
                f"--method {text!r}: name {name!r} may hold letters, digits and _ . + - only"
            )
        return name, parse_method_spec(spec)
    parsed = parse_method_spec(text)
    label = "-".join([parsed.kind, *(f"{k}{v}" for k, v in parsed.options.items())])
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label), parsed


class Method:
    """What the runner needs from a method under evaluation.

    Args:
        spec: the parsed SPEC.
        device: where to run.
        dtype: the networks' dtype (default float32).
    """

    kind: ClassVar[str] = ""
    #: The option names the method understands (others are rejected early).
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, spec: MethodSpec, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        unknown = sorted(set(spec.options) - set(self.options))
        if unknown:
            raise InputError(
                f"method {spec.text!r}: unknown setting {unknown[0]!r} for {spec.kind}; "
                f"known: {', '.join(self.options) or 'none'}"
            )
        self.spec = spec
        self.device = device or torch.device("cpu")
        self.dtype = dtype or torch.float32

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        """The output for one input portrait, prompt and seed. ``context`` carries
        ``face`` (the input's name) and ``prompt_index``."""
        raise NotImplementedError

    def cost(self) -> dict[str, float | None]:
        """``{"params": ..., "steps": ...}`` for Table 1's model size and inference steps."""
        return {"params": None, "steps": None}

    def settings(self) -> dict[str, Any]:
        """The settings to show in the report (the SPEC's options by default)."""
        return dict(self.spec.options)

    def close(self) -> None:
        """Free the method's models (called when the runner is done with it)."""


METHODS: dict[str, type[Method]] = {}

#: Methods registered by name before their modules exist: ``kind -> "module:Class"``.
METHOD_MODULES: dict[str, str] = {
    "fastface": "instantportrait.pipelines.fastface:FastFaceMethod",
    "facea-net": "instantportrait.pipelines.decoupled:FaceANetMethod",
    "fpga": "instantportrait.pipelines.fpga:FPGAMethod",
    "restore": "instantportrait.restoration.evaluation:RestoredMethod",
}


def register_method(kind: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a :class:`Method` available as ``kind`` in SPECs."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.kind = kind
        METHODS[kind] = cls
        return cls

    return deco


def method_class(kind: str) -> type[Method]:
    """The class of ``kind``, importing its module when registered in :data:`METHOD_MODULES`."""
    if kind in METHODS:
        return METHODS[kind]
    if kind in METHOD_MODULES:
        module_name, _, cls_name = METHOD_MODULES[kind].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise InputError(
                    f"method {kind!r} is registered but not available in this version "
                    f"({module_name} is missing)"
                ) from None
            raise
        cls = getattr(module, cls_name, None)
        if cls is None:
            raise InputError(f"method {kind!r}: {module_name} has no {cls_name}")
        METHODS[kind] = cls
        return cls
    known = sorted({*METHODS, *METHOD_MODULES})
    raise InputError(f"method kind {kind!r}: unknown; one of {', '.join(known)}")


def build_method(
    spec: MethodSpec | str, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Method:
    """A :class:`Method` from a SPEC (validated; its models load on first ``generate``)."""
    spec = parse_method_spec(spec) if isinstance(spec, str) else spec
    return method_class(spec.kind)(spec, device=device, dtype=dtype)


@register_method("identity")
class IdentityMethod(Method):
    """The input unchanged: a reference row (face similarity 1, no cost)."""

    options = ("resolution",)

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        res = self.spec.get("resolution")
        if res:
            from ..io import ResolutionPolicy

            return ResolutionPolicy(long_side=int(res)).apply(image)
        return image.copy()

    def cost(self) -> dict[str, float | None]:
        return {"params": 0, "steps": 0}


@register_method("edit")
class EditMethod(Method):
    """:class:`~instantportrait.pipelines.InstantPortraitPipeline` from ``PATH``.

    ``steps`` (default: the checkpoint's recommendation), ``iterations`` (style boost, default
    1), ``guidance_scale``, ``image_guidance_scale``, ``resolution`` (default 512),
    ``timestep`` (one-step mode), ``dtype`` (``float16``/``bfloat16``/``float32``). The seed
    seeds a CPU generator, as ``instantportrait edit --seed``. Cost: the UNet's parameters
    (Table 1's model size) and ``steps x iterations`` UNet passes.
    """

    options = (
        "steps",
        "iterations",
        "guidance_scale",
        "image_guidance_scale",
        "resolution",
        "timestep",
        "dtype",
    )

    def __init__(self, spec: MethodSpec, device=None, dtype=None) -> None:
        super().__init__(spec, device, dtype)
        if not spec.path:
            raise InputError(f"method {spec.text!r}: edit needs a model, edit:PATH[,...]")
        for key in ("steps", "iterations", "resolution"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"method {spec.text!r}: {key} must be a positive integer")
        if spec.get("dtype") is not None:
            from ..cli.common import DTYPES

            if spec.get("dtype") not in DTYPES:
                raise InputError(f"method {spec.text!r}: dtype one of {', '.join(DTYPES)}")
            self.dtype = DTYPES[spec.get("dtype")]
        self._pipe = None

    @property
    def pipe(self):
        """The pipeline, loaded on first use."""
        if self._pipe is None:
            from ..pipelines import InstantPortraitPipeline

            pipe = InstantPortraitPipeline.from_pretrained(self.spec.path)
            pipe = pipe.to(device=self.device, dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        return self._pipe

    @property
    def steps(self) -> int:
        """The denoising steps used."""
        return int(self.spec.get("steps") or self.pipe.config.recommended_steps)

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        return self.pipe(
            prompt,
            image,
            num_inference_steps=self.steps,
            guidance_scale=self.spec.get("guidance_scale"),
            image_guidance_scale=self.spec.get("image_guidance_scale"),
            iterations=int(self.spec.get("iterations") or 1),
            generator=torch.Generator("cpu").manual_seed(int(seed)),
            resolution=int(self.spec.get("resolution") or 512),
            timestep=self.spec.get("timestep"),
        ).images[0]

    def cost(self) -> dict[str, float | None]:
        from ..components import count_parameters

        return {
            "params": count_parameters(self.pipe.unet),
            "steps": self.steps * int(self.spec.get("iterations") or 1),
        }

    def close(self) -> None:
        self._pipe = None


@register_method("folder")
class FolderMethod(Method):
    """Outputs made elsewhere (another codebase, an earlier run), read from a folder.

    ``pattern`` (default ``{face}/{prompt_index:03d}_s{seed}.png``) is formatted with ``face``
    (the input's file stem), ``prompt_index``, ``prompt_hash`` and ``seed``; ``params`` and
    ``steps`` state its cost when known. A missing file is recorded as that item's failure.
    """

    options = ("pattern", "params", "steps")

    def __init__(self, spec: MethodSpec, device=None, dtype=None) -> None:
        super().__init__(spec, device, dtype)
        if not spec.path or not Path(spec.path).is_dir():
            raise InputError(f"method {spec.text!r}: folder:DIR needs an existing folder")

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        from ..io import load_image

        pattern = str(self.spec.get("pattern") or "{face}/{prompt_index:03d}_s{seed}.png")
        rel = pattern.format(seed=seed, **context)
        path = Path(self.spec.path) / rel
        if Path(self.spec.path).resolve() not in path.resolve().parents:
            raise InputError(f"{rel}: pattern leaves the folder {self.spec.path}")
        return load_image(path)

    def cost(self) -> dict[str, float | None]:
        return {"params": self.spec.get("params"), "steps": self.spec.get("steps")}
