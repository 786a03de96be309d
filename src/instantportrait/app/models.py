"""The app's models: loaded once, lazily, from the folders or Hub ids given at start-up.

The app starts with no model loaded. The first request of a method loads its pipeline (under
a lock, so a burst of first requests loads it once); a method with no model given says which
option provides it. Nothing here imports Gradio, so the ComfyUI nodes and tests share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .identities import IdentityStore


@dataclass
class ModelSlot:
    """One method's model: where it comes from, how it loads, and the loaded object."""

    method: str
    option: str
    source: str | None
    loader: Callable[[str, torch.device, torch.dtype], Any]
    #: checks ``source`` without loading weights (raises a one-line error); see
    #: :meth:`ModelRegistry.check_sources`
    checker: Callable[[str], None] | None = None
    _model: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def configured(self) -> bool:
        return self.source is not None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self, device: torch.device, dtype: torch.dtype) -> Any:
        """The model, loading it on first use. No source is one line for the web user (it
        names no option and no path: the operator's start-up lines do)."""
        if self.source is None:
            raise InputError(f"{self.method}: not available on this server (no model was given)")
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self.loader(self.source, device, dtype)
        return self._model


def load_edit_pipeline(source: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The InstantPortrait editor (a folder, Hub id or single ``.safetensors`` file) on
    ``device``, its progress bar off (the app shows its own state)."""
    from ..pipelines import load_edit_pipeline as load

    pipe = load(source, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass(frozen=True)
class FastFaceModel:
    """FastFace's pipeline and the ArcFace encoder that turns a photo into its inputs."""

    pipe: Any
    encoder: Any


def load_fastface_model(
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    face_model: str | None = None,
    **sources: Any,
) -> FastFaceModel:
    """FastFace as ``generate --method fastface`` loads it: :func:`load_fastface` on
    ``source`` (a family name or a folder) with the component ``sources`` (``family``,
    ``base``, ``distilled``, ``ip_adapter``, ``image_encoder``), and the ArcFace model."""
    from ..pipelines.faceid import FaceIDEncoder, load_face_model
    from ..pipelines.fastface_loading import load_fastface

    if face_model is None:
        raise InputError("fastface: no face model; restart the app with --fastface-face-model")
    encoder = FaceIDEncoder(load_face_model(face_model))
    pipe = load_fastface(source, dtype=dtype, device=device, **sources)
    pipe.set_progress_bar_config(disable=True)
    return FastFaceModel(pipe, encoder)


def load_fpga_pipeline(source: str, device: torch.device, dtype: torch.dtype) -> Any:
    """An FPGA pipeline folder or a merged RepControlNet (as ``generate --method fpga``)."""
    from ..pipelines.fpga_family import load_fpga_family

    return load_fpga_family(source, dtype=dtype, device=device, name="--fpga-model")


def load_restorer(
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    face_parser: str | None = None,
    codeformer: str | None = None,
    codeformer_fidelity: float = 0.5,
) -> Any:
    """DIIR's :class:`~..restoration.restorer.FaceRestorer` on a model folder (as ``restore``),
    with the BiSeNet face mask and CodeFormer after DIIR when their weights are given."""
    from ..restoration.restorer import FaceRestorer

    mask_fn = enhancer = None
    if face_parser:
        from ..faces.parsing import load_face_parser

        mask_fn = load_face_parser(face_parser, device, dtype)
    if codeformer:
        from ..restoration.codeformer import load_codeformer_enhancer

        enhancer = load_codeformer_enhancer(
            codeformer, codeformer_fidelity, device=device, dtype=dtype
        )
    restorer = FaceRestorer.from_pretrained(source, mask_fn=mask_fn, enhancer=enhancer)
    restorer.pipeline.to(device=device)
    if dtype != restorer.pipeline.unet.dtype:
        restorer.pipeline.to(dtype=dtype)
    restorer.pipeline.set_progress_bar_config(disable=True)
    return restorer


def load_personaliser(source: str, device: torch.device, dtype: torch.dtype, **kwargs: Any) -> Any:
    """FaceA-Net's :class:`.personalise.Personaliser` on the inpainting base ``source``."""
    from .personalise import Personaliser

    return Personaliser(source, device=device, dtype=dtype, **kwargs)


class ModelRegistry:
    """The models of every method the app offers, keyed by method name.

    Args:
        edit_model: the one-step editor (``--edit-model``).
        fastface_model: FastFace's model (``--fastface-model``: hyper, lightning, lcm, turbo
            or a folder); ``fastface`` holds its other sources (``face_model``, ``base``,
            ``distilled``, ``ip_adapter``, ``image_encoder``, ``family``).
        fpga_model: an FPGA pipeline folder or a merged RepControlNet (``--fpga-model``).
        restore_model: a DIIR model folder (``--restore-model``); ``restore`` holds the
            optional ``face_parser``, ``codeformer`` and ``codeformer_fidelity``.
        faceanet_base / faceanet_context_model: FaceA-Net's inpainting model and context
            model (``--faceanet-base``, ``--faceanet-context-model``).
        fastface_resolution: FastFace's image side (default: the family's).
        faceanet: more :class:`.personalise.Personaliser` arguments (``tune_steps``,
            ``resolution``, ``overrides``).
        workdir: where tuned identities are kept (default: a new temporary folder); its
            :class:`.identities.IdentityStore` is ``identities``, made at once so retention
            can run before the first request.
    """

    def __init__(
        self,
        *,
        edit_model: str | None = None,
        fastface_model: str | None = None,
        fastface: dict[str, Any] | None = None,
        fpga_model: str | None = None,
        restore_model: str | None = None,
        restore: dict[str, Any] | None = None,
        faceanet_base: str | None = None,
        faceanet_context_model: str | None = None,
        fastface_resolution: int | None = None,
        faceanet: dict[str, Any] | None = None,
        workdir: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        import functools

        self.device = torch.device(device)
        self.dtype = dtype
        self.fastface_resolution = fastface_resolution
        self.faceanet_base = faceanet_base
        self.faceanet_context_model = faceanet_context_model
        if workdir is None:
            import tempfile

            workdir = tempfile.mkdtemp(prefix="instantportrait-app-")
        self.workdir = Path(workdir)
        self.identities = IdentityStore(self.workdir / "faceanet")
        ff = {k: v for k, v in (fastface or {}).items() if v is not None}
        self._fastface = ff
        self._restore = {k: v for k, v in (restore or {}).items() if v is not None}
        self.slots: dict[str, ModelSlot] = {
            "edit": ModelSlot("edit", "--edit-model", edit_model, load_edit_pipeline),
            "fastface": ModelSlot(
                "fastface",
                "--fastface-model",
                fastface_model,
                functools.partial(load_fastface_model, **ff),
            ),
            "fpga": ModelSlot("fpga", "--fpga-model", fpga_model, load_fpga_pipeline),
            "restore": ModelSlot(
                "restore",
                "--restore-model",
                restore_model,
                functools.partial(load_restorer, **(restore or {})),
            ),
            "faceanet": ModelSlot(
                "faceanet",
                "--faceanet-base",
                faceanet_base,
                functools.partial(
                    load_personaliser,
                    context_model=faceanet_context_model,
                    store=self.identities,
                    **(faceanet or {}),
                ),
            ),
        }

    def get(self, method: str) -> Any:
        return self.slots[method].get(self.device, self.dtype)

    def check_sources(self) -> None:
        """Check every given model source without loading weights (each slot's ``checker``,
        then :meth:`check`: configs and tensor headers); a bad one raises its one-line error.
        The CLI calls this before serving."""
        for slot in self.slots.values():
            if slot.configured and slot.checker is not None:
                slot.checker(slot.source)
        self.check()

    def page_status(self) -> dict[str, str]:
        """method -> what the page shows: loaded, loads on first use, or not available (no
        path and no option: the page is for whoever uses the app)."""
        return {
            name: "loaded"
            if slot.loaded
            else "loads on first use"
            if slot.configured
            else "not available on this server"
            for name, slot in self.slots.items()
        }

    def sources(self) -> list[tuple[str, str, str, str | None]]:
        """``(option, source, use, file)`` of every model given at start-up."""
        from ..pipelines.fastface_presets import DEFAULT_ADAPTER

        out = [(s.option, s.source, s.method, None) for s in self.slots.values() if s.configured]
        ff = self._fastface
        extra = [
            ("--fastface-face-model", ff.get("face_model"), "face-model", None),
            ("--fastface-base", ff.get("base"), "fastface", None),
            ("--fastface-distilled", ff.get("distilled"), "distilled", None),
            ("--fastface-ip-adapter", ff.get("ip_adapter"), "ip-adapter", DEFAULT_ADAPTER[1]),
            ("--fastface-image-encoder", ff.get("image_encoder"), "image-encoder", None),
            ("--faceanet-context-model", self.faceanet_context_model, "faceanet-context", None),
            ("--restore-face-parser", self._restore.get("face_parser"), "face-parser", None),
            ("--restore-codeformer", self._restore.get("codeformer"), "codeformer", None),
        ]
        return out + [e for e in extra if e[1] is not None]

    def check(self) -> None:
        """Check every model given at start-up from its configs and tensor headers, without
        loading weights: a missing or wrong model is one line naming its option, at start
        rather than at the first request."""
        from ..model_check import check_model
        from ..pipelines.fastface_presets import FAMILIES

        for option, source, use, file in self.sources():
            if str(source) in FAMILIES or str(source) in ("tiny", "random-real"):
                continue
            check_model(str(source), use, option, file=file)

    def status(self) -> dict[str, str]:
        """method -> a line for the operator (printed at start): loaded, given (loads on first
        use), or the option that provides it."""
        lines = {}
        for name, slot in self.slots.items():
            if slot.loaded:
                lines[name] = f"loaded from {slot.source}"
            elif slot.configured:
                lines[name] = f"{slot.source} (loads on first use)"
            else:
                lines[name] = f"no model: start the app with {slot.option} PATH"
        return lines
