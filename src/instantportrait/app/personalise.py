"""The Personalise tab's operations (FaceA-Net), free of any UI library: tune a person from
1–3 photos (the ``train faceanet`` trainer, a few steps), then generate with the tuned identity
(:meth:`FaceANetPipeline.from_identity`, as ``generate --method faceanet``).

Tuned identities are run folders ``WORKDIR/faceanet/<id>/run`` (the photos beside it, in
``photos/``); a request names one by its id
(letters, digits, ``-``, ``_``), never by a path.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import check_prompt, load_image, save_image
from .methods import MethodResult, _generator, _steps

#: Photos one tuning takes (the paper uses about three).
MAX_PHOTOS = 3
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Personaliser:
    """FaceA-Net for the app: the inpainting base, an optional context model, a run folder.

    Args:
        base: SD-inpainting folder or Hub id (``--faceanet-base``).
        context_model: the context model (``--faceanet-context-model``); ``None``: a request
            must bring a context image (the photo to repaint).
        workdir: where tuned identities are kept (default: a fresh temporary folder).
        tune_steps: tuning steps (small: the app's default is for a CPU demo).
        resolution: the tuning crops' side.
        overrides: more config sections for the trainer (e.g. ``{"model": {"lora_rank": 4}}``).
    """

    def __init__(
        self,
        base: str,
        *,
        context_model: str | None = None,
        workdir: str | None = None,
        tune_steps: int = 20,
        resolution: int = 512,
        overrides: dict[str, dict[str, Any]] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.base = base
        self.context_model = context_model
        root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="instantportrait-app-"))
        self.root = root / "faceanet"
        self.tune_steps = int(tune_steps)
        self.resolution = int(resolution)
        self.overrides = overrides or {}
        self.device = torch.device(device)
        self.dtype = dtype
        self._pipes: dict[str, Any] = {}
        self._context: Any = None
        self._lock = threading.Lock()

    def identities(self) -> list[str]:
        """The ids of the identities tuned so far (newest last)."""
        if not self.root.is_dir():
            return []
        runs = [p for p in self.root.iterdir() if (p / "run" / "final").is_dir()]
        return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime)]

    def run_dir(self, identity: Any) -> Path:
        """The run folder of a tuned identity id; an unknown id is one line."""
        if not isinstance(identity, str) or not _ID.match(identity):
            raise InputError("identity: tune a person first (or pick one from the list)")
        run = self.root / identity / "run"
        if not (run / "final").is_dir():
            raise InputError(f"identity {identity}: not tuned here; tune a person first")
        return run

    def tune(self, photos: list[Any], gender: Any, *, steps: int | None = None) -> str:
        """Tune FaceA-Net on 1–3 photos of one person; returns the new identity's id.

        The trainer's tqdm bar is the progress (the UI mirrors it).
        """
        from ..training.config import from_dict
        from ..training.faceanet import FaceANetConfig, FaceANetTrainer

        images = [load_image(p, name=f"photo {i + 1}") for i, p in enumerate(photos or [])]
        if not 1 <= len(images) <= MAX_PHOTOS:
            raise InputError(f"photos: {len(images)}; give 1 to {MAX_PHOTOS} photos of the person")
        if gender not in ("man", "woman"):
            raise InputError(f"gender: {gender!r}; man or woman")
        count = self.tune_steps if steps is None else int(steps)
        if not 1 <= count <= 2000:
            raise InputError(f"tuning steps: {count}; between 1 and 2000")
        identity = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        run = self.root / identity
        (run / "photos").mkdir(parents=True)
        paths = [str(save_image(im, run / "photos" / f"{i}.png")) for i, im in enumerate(images)]
        config = {
            "model": {"base": self.base},
            "data": {"images": paths, "gender": gender, "resolution": self.resolution},
            "training": {
                "output_dir": str(run / "run"),
                "max_steps": count,
                "batch_size": min(2, len(paths)),
                "tensorboard": False,
                "validate_every": 0,
                "checkpoint_every": 0,
            },
        }
        for section, values in self.overrides.items():
            config.setdefault(section, {}).update(values)
        try:
            FaceANetTrainer(from_dict(FaceANetConfig, config)).fit()
        except BaseException:
            shutil.rmtree(run, ignore_errors=True)  # no half-tuned identity is left behind
            raise
        return identity

    def _pipe(self, identity: str) -> Any:
        from ..pipelines.faceanet import FaceANetPipeline

        run = self.run_dir(identity)
        with self._lock:
            if identity not in self._pipes:
                pipe = FaceANetPipeline.from_identity(run / "final", base=self.base)
                pipe = pipe.to(self.device, self.dtype)
                pipe.set_progress_bar_config(disable=True)
                self._pipes[identity] = pipe
            if self.context_model and self._context is None:
                from ..pipelines.faceanet_context import load_context_pipeline

                self._context = load_context_pipeline(self.context_model, self.device, self.dtype)
        return self._pipes[identity]

    def generate(
        self,
        identity: Any,
        prompt: Any,
        *,
        context_image: Any = None,
        seed: int = 0,
        steps: int = 30,
    ) -> MethodResult:
        """One image of the tuned person: ``context_image`` repainted (its face replaced),
        or a context model's image for ``prompt`` when no context image is given."""
        from ..pipelines.faceanet import NoFaceWarning
        from ..pipelines.faceanet_context import context_defaults

        text = check_prompt(prompt, name="prompt")
        context = load_image(context_image, name="context image") if context_image else None
        if context is None and not self.context_model:
            raise InputError(
                "context image: upload a photo to repaint, or restart the app with "
                "--faceanet-context-model"
            )
        pipe = self._pipe(identity)
        start = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if context is None:
            d = context_defaults(self.context_model)
            kwargs = {
                "context_pipeline": self._context,
                "context_kwargs": {
                    "num_inference_steps": d["steps"],
                    "guidance_scale": d["guidance_scale"],
                    "height": d["size"],
                    "width": d["size"],
                },
            }
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoFaceWarning)
            result = pipe(
                text,
                context_image=context,
                num_inference_steps=_steps(steps),
                generator=_generator(seed, self.device),
                **kwargs,
            )
        notes = [f"identity {identity}, seed {int(seed)}"]
        notes += [str(w.message) for w in caught if issubclass(w.category, NoFaceWarning)]
        return MethodResult(result.images[0], notes, time.perf_counter() - start)
