"""Methods under evaluation and the registry of method kinds.

A SPEC is ``KIND[:PATH][,key=value...]``, e.g. ``edit:runs/ipnet/final,steps=1,iterations=2``:
the method kind, an optional model path (or Hub id), then settings (ints, floats, ``true``/
``false`` and strings are recognised). On the command line a method is ``NAME=SPEC``; the name
labels its rows in the report.

Kinds (:data:`METHOD_KINDS`, ``kind -> "module:Class"``, imported on first use):

* ``edit`` (:class:`EditMethod`): :class:`~instantportrait.pipelines.InstantPortraitPipeline`
  (IPNet, IDE-Net, any InstructPix2Pix checkpoint). Settings: ``steps``, ``iterations``,
  ``guidance_scale``, ``image_guidance_scale``, ``resolution``, ``timestep``, ``dtype``.
* ``folder`` (:class:`FolderMethod`): outputs made elsewhere, read from
  ``PATH/{face}/{prompt_index:03d}_s{seed}.png`` (``pattern=`` changes it; fields ``face``,
  ``prompt_index``, ``prompt_hash``, ``seed``) -- the layout ``evaluate`` itself writes under
  ``OUT/outputs/NAME/``, so ``folder:OUT/outputs/NAME`` re-reads a run's outputs.
* ``identity``: the input unchanged (a reference row: face similarity 1).
* ``fastface``, ``faceanet``, ``fpga``, ``repcontrolnet``: registered by name; their classes
  arrive with their methods.

**Adding a kind** is one class and one line: subclass :class:`Method` (set ``options``,
implement ``generate``; optionally ``check``, ``cost``, ``fingerprint_data``, ``close``) and
add ``"kind": "module:Class"`` to :data:`METHOD_KINDS` (or decorate the class with
:func:`register_method` when its module is imported anyway). ``generate`` receives the
item's :class:`~instantportrait.evaluation.items.Subject` as ``context["subject"]``
(identities with tuning photos, held-out references, an optional condition) and may keep
per-identity caches (e.g. a tuned LoRA) under :attr:`Method.cache_dir`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from ..errors import InputError, ModelNotFoundError

__all__ = [
    "METHOD_KINDS",
    "METHOD_MODULES",
    "EditMethod",
    "FolderMethod",
    "IdentityMethod",
    "Method",
    "MethodSpec",
    "build_method",
    "folder_fingerprint",
    "method_class",
    "model_fingerprint",
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


def model_fingerprint(
    path: str | os.PathLike | None, marker: str = "model_index.json"
) -> dict[str, Any]:
    """What identifies a model given by path or Hub id, cheaply: for a local file or folder,
    every file's relative path, size and modification time (weights are too large to hash
    on every run); for a Hub id, the id and the cached snapshot's revision (found through
    ``marker``, a file every snapshot has) when known."""
    if path is None:
        return {}
    p = Path(path).expanduser()
    if p.exists():
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        h = hashlib.sha1()
        for f in files:
            st = f.stat()
            rel = f.name if p.is_file() else f.relative_to(p).as_posix()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"path": str(p.resolve()), "files": h.hexdigest()[:16]}
    revision = None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(str(path), marker)
        if isinstance(found, str):
            revision = Path(found).parent.name
    except Exception:  # noqa: BLE001 - a revision is a best-effort detail of the key
        pass
    return {"hub_id": str(path), "revision": revision}


def folder_fingerprint(path: str | os.PathLike) -> str:
    """BLAKE2b over every file's relative path and contents under ``path`` (16 hex digits):
    a ``folder:`` method's identity changes whenever any of its images does."""
    from .items import file_digest

    root = Path(path)
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f"{f.relative_to(root).as_posix()}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


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
        #: A folder the method may keep per-identity caches in (set by the runner).
        self.cache_dir: Path | None = None
        #: The run's prompts (set by the runner before :meth:`fingerprint`).
        self.prompts: list[Any] = []
        #: Whether the method may show progress bars of its own (set by the runner).
        self.progress: bool = True

    def check(self) -> None:
        """Raise :class:`~instantportrait.errors.ModelNotFoundError` (or ``InputError``) when
        the method cannot run, before anything is generated (default: nothing to check)."""

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        """The output for one input portrait, prompt and seed. ``context`` carries ``face``
        (the subject's name), ``prompt_index``, ``prompt_hash`` and ``subject`` (the item's
        :class:`~instantportrait.evaluation.items.Subject`: identities, condition)."""
        raise NotImplementedError

    def cost(self) -> dict[str, float | None]:
        """``{"params": ..., "steps": ...}`` for Table 1's model size and inference steps."""
        return {"params": None, "steps": None}

    def settings(self) -> dict[str, Any]:
        """The settings to show in the report (the SPEC's options by default)."""
        return dict(self.spec.options)

    def fingerprint_data(self) -> dict[str, Any]:
        """Everything that determines this method's outputs (JSON-able): the kind, the
        settings, the dtype and the model's identity. Extend it for state the SPEC does not
        show (a folder's contents, a tuned identity cache...)."""
        return {
            "kind": self.spec.kind,
            "options": {k: self.spec.options[k] for k in sorted(self.spec.options)},
            "dtype": str(self.dtype).replace("torch.", ""),
            "model": model_fingerprint(self.spec.path),
        }

    def fingerprint(self) -> str:
        """A hash of :meth:`fingerprint_data` (16 hex digits): results are keyed by it."""
        data = json.dumps(self.fingerprint_data(), sort_keys=True, default=str)
        return hashlib.sha1(data.encode()).hexdigest()[:16]

    def close(self) -> None:
        """Free the method's models (called when the runner is done with it)."""


METHODS: dict[str, type[Method]] = {}

#: The method kinds: ``kind -> "module:Class"``, imported on first use. A new kind is one
#: :class:`Method` subclass and one line here. The last three arrive with their methods
#: (FastFace, FaceA-Net, FPGA); until then asking for them says so in one line.
METHOD_KINDS: dict[str, str] = {
    "identity": "instantportrait.evaluation.methods:IdentityMethod",
    "edit": "instantportrait.evaluation.methods:EditMethod",
    "folder": "instantportrait.evaluation.methods:FolderMethod",
    "fastface": "instantportrait.evaluation.kinds.fastface:FastFaceMethod",
    "faceanet": "instantportrait.evaluation.kinds.faceanet:FaceANetMethod",
    "fpga": "instantportrait.evaluation.kinds.fpga:FPGAMethod",
    "repcontrolnet": "instantportrait.evaluation.kinds.repcontrolnet:RepControlNetMethod",
    "restore": "instantportrait.restoration.evaluation:RestoredMethod",
}

#: The former name of :data:`METHOD_KINDS` (the same dict).
METHOD_MODULES = METHOD_KINDS


def register_method(kind: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a :class:`Method` available as ``kind`` in SPECs."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.kind = kind
        METHODS[kind] = cls
        return cls

    return deco


def method_class(kind: str) -> type[Method]:
    """The class of ``kind``, importing its module when listed in :data:`METHOD_KINDS`."""
    if kind in METHODS:
        return METHODS[kind]
    if kind in METHOD_KINDS:
        module_name, _, cls_name = METHOD_KINDS[kind].partition(":")
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
        if not cls.kind:
            cls.kind = kind
        METHODS[kind] = cls
        return cls
    known = sorted({*METHODS, *METHOD_KINDS})
    raise InputError(f"method kind {kind!r}: unknown; one of {', '.join(known)}")


def build_method(
    spec: MethodSpec | str, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Method:
    """A :class:`Method` from a SPEC (validated; its models load on first ``generate``)."""
    spec = parse_method_spec(spec) if isinstance(spec, str) else spec
    return method_class(spec.kind)(spec, device=device, dtype=dtype)


def check_model_path(
    path: str, what: str, marker: str = "model_index.json", use: str | None = None
) -> None:
    """Check a method's model before any item runs: it exists (a local folder or file, or a
    Hub id that is cached or fetchable) and, with ``use`` (a key of
    :data:`~instantportrait.model_check.USES`), its layout fits that use. Without ``use`` a
    folder must hold ``marker``. Every failure is one line naming ``what``."""
    from ..model_check import check_model
    from ..model_sources import locate

    if use is not None:
        check_model(path, use, what)
        return
    where = locate(path, what)
    if not isinstance(where, str) and where.is_dir() and not (where / marker).is_file():
        raise ModelNotFoundError(f"{what} {path}: not a model folder (no {marker})")


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
    """:class:`~instantportrait.pipelines.InstantPortraitPipeline` from ``PATH``, or
    :class:`~instantportrait.pipelines.kontext_edit.KontextEditPipeline` for a FLUX.1 Kontext
    folder (``load_edit_pipeline`` tells them apart; its cost counts the transformer).

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
            from ..devices import DTYPES

            if spec.get("dtype") not in DTYPES:
                raise InputError(f"method {spec.text!r}: dtype one of {', '.join(DTYPES)}")
            self.dtype = DTYPES[spec.get("dtype")]
        self._pipe = None

    def check(self) -> None:
        check_model_path(str(self.spec.path), f"method {self.spec.text!r}", use="edit")

    @property
    def pipe(self):
        """The pipeline, loaded on first use."""
        if self._pipe is None:
            from ..pipelines import load_edit_pipeline  # InstructPix2Pix format or Kontext

            pipe = load_edit_pipeline(self.spec.path, device=self.device, dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        return self._pipe

    @property
    def steps(self) -> int:
        """The denoising steps used."""
        return int(self.spec.get("steps") or self.pipe.recommended_steps)

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
            "params": count_parameters(getattr(self.pipe, "transformer", None) or self.pipe.unet),
            "steps": self.steps * int(self.spec.get("iterations") or 1),
        }

    def close(self) -> None:
        self._pipe = None


#: The folder method's default file layouts, tried in order: the documented one for outputs
#: made elsewhere, then the one ``evaluate`` writes (``OUT/outputs/NAME/...``).
PATTERNS = (
    "{face}/{prompt_index:03d}_s{seed}.png",
    "{face}/{prompt_index:03d}-{prompt_hash}_s{seed}.png",
)


@register_method("folder")
class FolderMethod(Method):
    """Outputs made elsewhere (another codebase, an earlier run), read from a folder.

    ``pattern`` (default ``{face}/{prompt_index:03d}_s{seed}.png``, then the layout
    ``evaluate`` writes, ``{face}/{prompt_index:03d}-{prompt_hash}_s{seed}.png``) is formatted
    with ``face`` (the subject's name: the input's file stem), ``prompt_index``,
    ``prompt_hash`` and ``seed``; ``params`` and ``steps`` state its cost when known. A
    missing file is recorded as that item's failure.
    """

    options = ("pattern", "params", "steps")

    def __init__(self, spec: MethodSpec, device=None, dtype=None) -> None:
        super().__init__(spec, device, dtype)
        if spec.get("pattern") is not None and not isinstance(spec.get("pattern"), str):
            raise InputError(f"method {spec.text!r}: pattern must be text")
        if not spec.path or not Path(spec.path).is_dir():
            raise InputError(f"method {spec.text!r}: folder:DIR needs an existing folder")

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        from ..io import load_image

        fields = {k: v for k, v in context.items() if k != "subject"}
        patterns = [self.spec.get("pattern")] if self.spec.get("pattern") else list(PATTERNS)
        root = Path(self.spec.path)
        for i, pattern in enumerate(patterns):
            rel = str(pattern).format(seed=seed, **fields)
            path = root / rel
            if root.resolve() not in path.resolve().parents:
                raise InputError(f"{rel}: pattern leaves the folder {self.spec.path}")
            if path.is_file() or i == len(patterns) - 1:
                return load_image(path)
        raise AssertionError("unreachable")

    def cost(self) -> dict[str, float | None]:
        return {"params": self.spec.get("params"), "steps": self.spec.get("steps")}

    def fingerprint_data(self) -> dict[str, Any]:
        # the images are the method: their contents, not the folder's path, identify it; and
        # which file an item reads depends on its prompt's index in this run
        prompts = sorted(self.prompts, key=lambda p: p.index)
        return {
            "kind": self.spec.kind,
            "options": {k: self.spec.options[k] for k in sorted(self.spec.options)},
            "contents": folder_fingerprint(self.spec.path),
            "prompt_index": [p.text for p in prompts],
        }
