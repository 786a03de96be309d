"""The ``fpga`` method kind: FPGA's ID-ControlNet pipeline under the evaluation harness.

SPEC: ``fpga:MODEL[,steps=30][,guidance_scale=5][,id_scale=1][,width=W][,height=H]`` where
``MODEL`` is an FPGA pipeline folder (``train fpga`` or ``init-tiny --kind fpga``).

Each item's subject gives everything the method uses (FPGA §8's protocol: the ID(s) and the
skeleton of a test photo, compared with that photo):

* the **identities**: F_id from each identity's first photo (its largest face), in order;
* the **condition** (required): an OpenPose/COCO keypoints JSON, drawn by the one condition
  renderer at the output size, or a ready condition image;
* the **face regions** of several identities: each identity's ``region`` (output pixels)
  when every identity has one, else the head boxes of the keypoints' people, left to right
  (as ``generate --method fpga``). A condition image with several identities needs regions.

The output size is ``width`` x ``height``, else the keypoints' canvas or the condition image's
size (snapped to 8), else 512. The seed seeds a CPU generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ...errors import InputError
from ..methods import Method, MethodSpec

__all__ = ["FPGAMethod", "subject_condition"]


def subject_condition(
    subject: Any, width: int | None, height: int | None
) -> tuple[Image.Image, np.ndarray | None]:
    """The condition image and the ``(K, H, W)`` face-region masks (``None`` for one identity
    without a region) of ``subject``."""
    from pathlib import Path

    from ...conditions import box_mask, load_keypoints, render_condition, scale_keypoints
    from ...io import load_image
    from ...pipelines.fpga import face_region_masks

    if subject.condition is None:
        raise InputError(f"subject {subject.name}: fpga needs a pose condition (keypoints JSON)")
    k = len(subject.identities)
    regions = [i.region for i in subject.identities]
    kps = None
    if Path(subject.condition).suffix.lower() == ".json":
        kps, canvas = load_keypoints(subject.condition)
        cw, ch = canvas or (width or 512, height or 512)
        w, h = width or cw, height or ch
        kps = scale_keypoints(kps, w / cw, h / ch)
        cond = render_condition((w, h), keypoints=kps, mode="skeleton")
    else:
        cond = load_image(subject.condition, name=f"subject {subject.name} condition")
        if width or height:
            cond = cond.resize((width or cond.width, height or cond.height))
    size = (cond.width, cond.height)
    if all(r is not None for r in regions):
        return cond, np.stack([box_mask(tuple(r), size) for r in regions])
    if k == 1:
        return cond, None
    if kps is None:
        raise InputError(
            f"subject {subject.name}: {k} identities on a condition image need a region each"
        )
    return cond, face_region_masks(kps, size, k)


class FPGAMethod(Method):
    """FPGA: identities, pose condition and face regions from the item's subject."""

    options = ("steps", "guidance_scale", "id_scale", "width", "height")

    def __init__(
        self, spec: MethodSpec, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(spec, device, dtype)
        if not spec.path:
            raise InputError(f"method {spec.text!r}: fpga needs the pipeline folder, fpga:PATH")
        for key in ("steps", "width", "height"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"method {spec.text!r}: {key} must be a positive integer")
        for key in ("width", "height"):
            if spec.get(key) is not None and spec.get(key) % 8:
                raise InputError(f"method {spec.text!r}: {key} must be a multiple of 8")
        self._pipe = None
        self._ids: dict[str, torch.Tensor] = {}

    #: the model kind (:func:`~instantportrait.model_check.identify`) this method loads.
    model_kind = "fpga"

    def check(self) -> None:
        """The folder is an FPGA-family pipeline of this kind (a merged RepControlNet given
        to ``fpga:`` says to use ``repcontrolnet:``), before any item runs."""
        from ...model_check import check_model

        where = f"method {self.spec.text!r}"
        found = check_model(str(self.spec.path), "fpga", where)
        if found.kind not in (self.model_kind, "hub"):
            loads = {"fpga": "an FPGA pipeline folder", "repcontrolnet": "a merged RepControlNet"}
            raise InputError(
                f"{where}: {found.description}; the {self.model_kind} kind loads "
                f"{loads[self.model_kind]} (use the {found.kind} kind)"
            )

    @property
    def pipe(self):
        """The pipeline, loaded on first use."""
        if self._pipe is None:
            self._pipe = self.load_pipeline()
        return self._pipe

    def load_pipeline(self):
        """The FPGA pipeline of the spec's folder (a subclass may load another family member)."""
        from ...pipelines.fpga import FPGAPipeline

        pipe = FPGAPipeline.from_pretrained(str(self.spec.path), dtype=self.dtype)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def call_options(self) -> dict[str, Any]:
        """Extra keyword arguments of the pipeline call (none for FPGA)."""
        return {}

    @property
    def steps(self) -> int:
        """The denoising steps used."""
        return int(self.spec.get("steps") or self.pipe.config.default_steps)

    def identity_embeddings(self, subject: Any) -> torch.Tensor:
        """F_id ``(K, T, D)`` of the subject's identities (cached per subject contents)."""
        key = subject.fingerprint() if hasattr(subject, "fingerprint") else subject.name
        if key not in self._ids:
            from ...io import load_image

            photos = [i.photos[0] for i in subject.identities]
            faces = [load_image(p, name=str(p)) for p in photos]
            names = [f"subject {subject.name}, identity {i.name}" for i in subject.identities]
            self._ids[key] = self.pipe.encode_identity(faces, names)
        return self._ids[key]

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        subject = context.get("subject")
        if subject is None:
            raise InputError("fpga: the item has no subject (run through evaluate)")
        cond, masks = subject_condition(subject, self.spec.get("width"), self.spec.get("height"))
        return self.pipe(
            prompt,
            cond,
            id_embeds=self.identity_embeddings(subject),
            id_masks=masks,
            num_inference_steps=self.steps,
            guidance_scale=self.spec.get("guidance_scale"),
            id_scale=float(self.spec.get("id_scale", 1.0)),
            generator=torch.Generator("cpu").manual_seed(int(seed)),
            **self.call_options(),
        ).images[0]

    def cost(self) -> dict[str, float | None]:
        from ...components import count_parameters

        params = count_parameters(self.pipe.unet) + count_parameters(self.pipe.controlnet)
        return {"params": params, "steps": self.steps}

    def close(self) -> None:
        self._pipe = None
        self._ids.clear()
