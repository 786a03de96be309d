"""The Personalise tab's operations (FaceA-Net), free of any UI library: tune a person from
1–3 photos (the ``train faceanet`` trainer, a few steps), then generate with the tuned identity
(:meth:`FaceANetPipeline.from_identity`, as ``generate --method faceanet``).

Every operation names its caller (``owner``: the signed-in user, or the browser session when
sign-in is off); identities live in an :class:`.identities.IdentityStore` and a caller sees,
uses and deletes only their own. A request names an identity by its id, never by a path, and
no message names a server path or a command-line option.

Limits, each a one-line answer: ``max_identities`` stored per owner, ``max_tuning`` tuning
jobs at once per owner, and ``tune_slots`` tunings at once in all (the rest wait their turn).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import check_prompt, load_image
from ..writer import save_image
from .identities import IdentityStore
from .methods import MethodResult, _generator, _steps

#: Photos one tuning takes (the paper uses about three).
MAX_PHOTOS = 3


class Personaliser:
    """FaceA-Net for the app: the inpainting base, an optional context model, the identities.

    Args:
        base: SD-inpainting folder or Hub id.
        context_model: the context model; ``None``: a request must bring a context image (the
            photo to repaint).
        workdir: where tuned identities are kept (``WORKDIR/faceanet``; default: a fresh
            temporary folder), unless ``store`` is given.
        store: the identity store (the app makes one at start, so retention runs before the
            first request).
        tune_steps: tuning steps (small: the app's default is for a CPU demo).
        resolution: the tuning crops' side.
        overrides: more config sections for the trainer (e.g. ``{"model": {"lora_rank": 4}}``).
        keep_photos: keep the uploaded photos beside the LoRA (default: deleted when tuning
            ends).
        max_identities: identities one owner may keep.
        max_tuning: tuning jobs one owner may run at once.
        tune_slots: tuning jobs that run at once in all; later ones wait.
    """

    def __init__(
        self,
        base: str,
        *,
        context_model: str | None = None,
        workdir: str | None = None,
        store: IdentityStore | None = None,
        tune_steps: int = 20,
        resolution: int = 512,
        overrides: dict[str, dict[str, Any]] | None = None,
        keep_photos: bool = False,
        max_identities: int = 10,
        max_tuning: int = 1,
        tune_slots: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        import tempfile

        self.base = base
        self.context_model = context_model
        if store is None:
            root = workdir or tempfile.mkdtemp(prefix="instantportrait-app-")
            store = IdentityStore(Path(root) / "faceanet")
        self.store = store
        self.store.on_remove = self._forget
        self.tune_steps = int(tune_steps)
        self.resolution = int(resolution)
        self.overrides = overrides or {}
        self.keep_photos = bool(keep_photos)
        self.max_identities = int(max_identities)
        self.max_tuning = int(max_tuning)
        self.device = torch.device(device)
        self.dtype = dtype
        self._pipes: dict[Path, Any] = {}
        self._context: Any = None
        self._lock = threading.Lock()
        self._tuning: dict[str, int] = {}
        self._slots = threading.Semaphore(int(tune_slots))

    @property
    def root(self) -> Path:
        return self.store.root

    def identities(self, owner: str) -> list[str]:
        """The ids of ``owner``'s tuned identities (newest last)."""
        return self.store.list(owner)

    def delete(self, owner: str, identity: Any) -> None:
        """Delete ``owner``'s identity: photos, LoRA, run folder, and its loaded pipeline."""
        self.store.delete(owner, identity)

    def _forget(self, folder: Path) -> None:
        with self._lock:
            self._pipes.pop(folder, None)

    @contextlib.contextmanager
    def _tuning_job(self, owner: str) -> Iterator[None]:
        """One of ``owner``'s tuning jobs: refused past ``max_tuning`` at once or past
        ``max_identities`` stored."""
        with self._lock:
            running = self._tuning.get(owner, 0)
            if running >= self.max_tuning:
                raise InputError(
                    f"tuning: {running} of your tunings already running (at most "
                    f"{self.max_tuning} at once); wait for it to finish"
                )
            if self.store.count(owner) >= self.max_identities:
                raise InputError(
                    f"identities: you keep {self.max_identities}, the most allowed; delete one "
                    "first"
                )
            self._tuning[owner] = running + 1
        try:
            yield
        finally:
            with self._lock:
                self._tuning[owner] -= 1
                if not self._tuning[owner]:
                    del self._tuning[owner]

    def _check_faces(self, images: list[Any]) -> None:
        """Each photo shows a face (before anything is written; the trainer's detector)."""
        from ..faces.detect import NoFaceFoundError, detect

        method = self.overrides.get("data", {}).get("detector", "hog")
        for i, image in enumerate(images):
            try:
                detect(image, method=method, select="largest")
            except NoFaceFoundError:
                raise InputError(
                    f"photo {i + 1}: no face found; upload a photo where the face is clearly "
                    "visible"
                ) from None

    def tune(
        self,
        owner: str,
        photos: list[Any],
        gender: Any,
        *,
        steps: int | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> str:
        """Tune FaceA-Net on 1–3 photos of one person for ``owner``; returns the new id.

        The trainer's tqdm bar is the progress (the UI mirrors it). ``on_wait`` is called
        when the job must wait for a free tuning slot. The photos are deleted when tuning
        ends unless ``keep_photos``.
        """
        images = [load_image(p, name=f"photo {i + 1}") for i, p in enumerate(photos or [])]
        if not 1 <= len(images) <= MAX_PHOTOS:
            raise InputError(f"photos: {len(images)}; give 1 to {MAX_PHOTOS} photos of the person")
        if gender not in ("man", "woman"):
            raise InputError(f"gender: {gender!r}; man or woman")
        count = self.tune_steps if steps is None else int(steps)
        if not 1 <= count <= 2000:
            raise InputError(f"tuning steps: {count}; between 1 and 2000")
        with self._tuning_job(owner):
            self._check_faces(images)
            if not self._slots.acquire(blocking=False):
                if on_wait is not None:
                    on_wait()
                self._slots.acquire()
            try:
                identity, folder = self.store.create(owner)
                try:
                    self._fit(folder, images, gender, count)
                except BaseException:
                    self.store.remove(folder)  # no half-tuned identity is left behind
                    raise
                finally:
                    if not self.keep_photos:
                        shutil.rmtree(folder / "photos", ignore_errors=True)
                    self.store.release(folder)
            finally:
                self._slots.release()
        return identity

    def _fit(self, folder: Path, images: list[Any], gender: str, count: int) -> None:
        """The ``train faceanet`` trainer on ``images``, into ``folder/run``."""
        from ..training.config import from_dict
        from ..training.faceanet import FaceANetConfig, FaceANetTrainer

        (folder / "photos").mkdir()
        paths = [str(save_image(im, folder / "photos" / f"{i}.png")) for i, im in enumerate(images)]
        config = {
            "model": {"base": self.base},
            "data": {"images": paths, "gender": gender, "resolution": self.resolution},
            "training": {
                "output_dir": str(folder / "run"),
                "max_steps": count,
                "batch_size": min(2, len(paths)),
                "tensorboard": False,
                "validate_every": 0,
                "checkpoint_every": 0,
            },
        }
        for section, values in self.overrides.items():
            config.setdefault(section, {}).update(values)
        FaceANetTrainer(from_dict(FaceANetConfig, config)).fit()

    def _pipe(self, owner: str, identity: Any) -> Any:
        from ..pipelines.faceanet import FaceANetPipeline

        folder = self.store.find(owner, identity)
        with self._lock:
            if folder not in self._pipes:
                pipe = FaceANetPipeline.from_identity(folder / "run" / "final", base=self.base)
                pipe = pipe.to(self.device, self.dtype)
                pipe.set_progress_bar_config(disable=True)
                self._pipes[folder] = pipe
            if self.context_model and self._context is None:
                from ..pipelines.faceanet_context import load_context_pipeline

                self._context = load_context_pipeline(self.context_model, self.device, self.dtype)
            return self._pipes[folder]

    def generate(
        self,
        owner: str,
        identity: Any,
        prompt: Any,
        *,
        context_image: Any = None,
        seed: int = 0,
        steps: int = 30,
    ) -> MethodResult:
        """One image of ``owner``'s tuned person: ``context_image`` repainted (its face
        replaced), or a context model's image for ``prompt`` when no context image is given."""
        from ..pipelines.faceanet import NoFaceWarning
        from ..pipelines.faceanet_context import context_defaults

        text = check_prompt(prompt, name="prompt")
        context = load_image(context_image, name="context image") if context_image else None
        if context is None and not self.context_model:
            raise InputError(
                "context image: upload a photo to repaint (this server has no context model)"
            )
        pipe = self._pipe(owner, identity)
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
