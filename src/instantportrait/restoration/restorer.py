"""FaceRestorer: find the faces too small to trust and restore them all with DIIR.

For one image (FPGA spec §4.1, §7 step 6):

1. detect every face with its 68 landmarks (the face stack; dlib's HOG detector by default);
2. keep those whose box is smaller than ``restore_below`` pixels (``max(w, h) < 100`` by
   default); larger faces are left untouched;
3. per kept face: the square crop of 2x its box resized to the DIIR resolution (I_Bro), its
   landmarks rendered as the landmark-only condition (I_ldm), the face mask M_B from the
   landmarks (or from a face parser when given) with its border smoothed by a Gaussian of
   ``feather`` (2%) of the crop side, and the identity it should have: the id image (or F_id)
   given for it, else the face itself (another person's id image makes it a face swap). With
   ``regions`` (one per person, e.g. FPGA's face-region masks) each face takes the identity of
   the person whose region covers most of its box (:func:`match_faces`); a face no region
   covers is left untouched, and a note says so;
4. all kept faces restored in one batch by :class:`~..pipelines.restore.DIIRPipeline`;
5. optionally, an ``enhancer`` (CodeFormer after DIIR, the paper's Table 4) applied to the
   restored crops;
6. each restored crop pasted back through its smoothed mask: pixels outside every mask keep
   their exact input values.

The identity embedding F_id needs an ID encoder (FPGA's CLIP-vision + ArcFace resampler):
``id_encoder(images: list[PIL.Image]) -> (B, tokens, dim)``. Without one, the restoration is
driven by the landmarks, the prompt and the inversion only, and a note says so when an id
image was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..io import ImageSource, load_image
from .paste import CropBox, crop_face, face_crop_box, paste_back

__all__ = [
    "FaceRestorer",
    "RestoreResult",
    "RestoredFace",
    "default_landmark_renderer",
    "match_faces",
]

LandmarkRenderer = Callable[[np.ndarray, tuple[int, int]], Image.Image]
IdEncoder = Callable[[list[Image.Image]], torch.Tensor]
#: ``(crop, landmarks in crop pixels) -> (H, W)`` mask in [0, 1] (e.g. a BiSeNet face parser).
MaskFn = Callable[[Image.Image, np.ndarray], torch.Tensor]
#: ``restored crops -> enhanced crops`` (same count and order), e.g. CodeFormer.
Enhancer = Callable[[list[Image.Image]], list[Image.Image]]


def default_landmark_renderer() -> LandmarkRenderer:
    """FPGA's landmark renderer (``instantportrait.conditions.render_landmarks``), imported late."""
    from ..conditions import render_landmarks

    return render_landmarks


def match_faces(boxes: Any, regions: Any) -> list[int | None]:
    """The person each face belongs to: the region covering the most of its box.

    Args:
        boxes: ``(N, 4)`` face boxes ``(x0, y0, x1, y1)`` in image pixels (``x1``/``y1``
            exclusive).
        regions: ``(K, H, W)`` person regions in ``[0, 1]`` at the image's size (e.g. the
            face-region masks multi-ID generation used).

    Returns:
        Per face, the index of the region with the largest mass inside its box, or ``None``
        where no region reaches into the box. Ties go to the earlier region.
    """
    masks = np.asarray(regions, dtype=np.float64)
    if masks.ndim != 3:
        raise ValueError(f"regions: expected (K, H, W), got shape {masks.shape}")
    h, w = masks.shape[1:]
    out: list[int | None] = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        xs = slice(int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.ceil(x1), 0, w)))
        ys = slice(int(np.clip(np.floor(y0), 0, h)), int(np.clip(np.ceil(y1), 0, h)))
        mass = masks[:, ys, xs].sum(axis=(1, 2))
        out.append(int(mass.argmax()) if mass.size and mass.max() > 0 else None)
    return out


@dataclass
class RestoredFace:
    """One face DIIR restored: its detection box, crop, and where its identity came from."""

    box: tuple[float, float, float, float]
    crop: CropBox
    identity: str


@dataclass
class RestoreResult:
    """The output image, the faces restored, the faces left alone (``skipped``: larger than
    the trigger; ``unmatched``: in no person's region) and the notes for the user."""

    image: Image.Image
    faces: list[RestoredFace] = field(default_factory=list)
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    #: small faces left untouched because no person's region covered them
    unmatched: int = 0


class FaceRestorer:
    """Restore every face smaller than ``restore_below`` pixels with DIIR.

    Args:
        pipeline: a :class:`~..pipelines.restore.DIIRPipeline`.
        restore_below: faces whose box's longer side is below this many pixels are restored
            (default 100, the paper's trigger).
        prompt: the prompt C (the generation's prompt when called from a generating command).
        num_inference_steps / guidance_scale: T and the CFG of the regeneration (30 / 5).
        crop_scale: the crop's side in face-box sides (default 2).
        feather: standard deviation of the mask border's Gaussian, as a fraction of the crop
            side (default 0.02).
        stats_region: MGFF's AdaIN statistics (``global``, ``face``, ``literal``).
        id_encoder: maps face images to F_id ``(B, tokens, dim)``; ``None``: no identity term.
        landmark_renderer: draws the landmark condition; default FPGA's renderer.
        mask_fn: a face parser giving M_B on the crop (e.g.
            :class:`~..faces.parsing.FaceParser`; its ``take_notes()``, when it has one, joins
            the result's notes); default the landmark face mask.
        detector: keyword arguments of :func:`~..faces.detect` (e.g. ``method="mmod"``, or
            ``method=FaceDetectorConfig("scrfd", "det_10g.onnx")``: SCRFD's boxes, dlib's 68
            landmarks on them; an FPGA ID encoder then finds faces with it too).
        enhancer: applied to the DIIR-restored crops before paste-back (e.g.
            :class:`~.codeformer.CodeFormerEnhancer`); ``None``: DIIR only.
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        restore_below: float = 100,
        prompt: str = "a photo of a person's face, high quality",
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        crop_scale: float = 2.0,
        feather: float = 0.02,
        stats_region: str = "global",
        id_encoder: IdEncoder | None = None,
        landmark_renderer: LandmarkRenderer | None = None,
        mask_fn: MaskFn | None = None,
        detector: dict[str, Any] | None = None,
        enhancer: Enhancer | None = None,
    ):
        if restore_below <= 0:
            raise ValueError(f"restore_below: must be positive, got {restore_below}")
        self.pipeline = pipeline
        self.restore_below = float(restore_below)
        self.prompt = prompt
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.crop_scale = float(crop_scale)
        self.feather = float(feather)
        self.stats_region = stats_region
        self.id_encoder = id_encoder
        self._renderer = landmark_renderer
        self.mask_fn = mask_fn
        self.detector = {"upsample": 1, **(detector or {})}
        self.enhancer = enhancer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> FaceRestorer:
        """A restorer on the model folder ``path``; ``kwargs`` as for the constructor.

        ``path`` is a local folder or a Hub id (from the Hugging Face cache offline), its
        layout checked first. A DIIR folder (``init-tiny --kind restore``) loads as it is; an
        FPGA pipeline folder
        (``_class_name`` ``FPGAPipeline``: SD1.5 + ID-ControlNet + resampler) loads through
        :meth:`from_pipeline`, so its ``encode_identity`` becomes the ID encoder.
        """
        from ..model_check import check_model
        from ..model_sources import locate
        from ..pipelines.restore import DIIR_HOW, DIIRPipeline

        found = check_model(path, "restore", "model", how=DIIR_HOW)
        where = locate(path, "model", DIIR_HOW)
        if found.kind == "fpga":
            from ..pipelines.fpga import FPGAPipeline  # issue 15

            return cls.from_pipeline(FPGAPipeline.from_pretrained(str(where)), **kwargs)
        pipe = DIIRPipeline.from_pretrained(where)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, **kwargs)

    @classmethod
    def from_pipeline(cls, pipe: Any, *, resolution: int = 512, **kwargs: Any) -> FaceRestorer:
        """A restorer sharing the components of another SD1.5 + landmark-ControlNet pipeline.

        ``pipe`` needs ``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``controlnet`` and
        ``scheduler`` (a DDIM scheduler is made from its config); when it has
        ``encode_identity(images) -> F_id`` (FPGA's pipeline) that becomes the ID encoder
        unless ``id_encoder`` is given.
        """
        from diffusers import DDIMScheduler

        from ..pipelines.restore import DIIRPipeline

        diir = DIIRPipeline(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=pipe.unet,
            controlnet=pipe.controlnet,
            scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
            resolution=resolution,
        )
        diir.set_progress_bar_config(disable=True)
        method = (kwargs.get("detector") or {}).get("method")
        if method is not None and callable(getattr(pipe, "set_face_detector", None)):
            pipe.set_face_detector(method)  # the ID encoder finds faces with it too
        encode = getattr(pipe, "encode_identity", None)
        if callable(encode) and kwargs.get("id_encoder") is None:
            kwargs["id_encoder"] = encode
        return cls(diir, **kwargs)

    @property
    def resolution(self) -> int:
        return int(self.pipeline.config.resolution)

    @property
    def landmark_renderer(self) -> LandmarkRenderer:
        if self._renderer is None:
            self._renderer = default_landmark_renderer()
        return self._renderer

    # ------------------------------------------------------------------ parts
    def face_mask(self, crop_image: Image.Image, landmarks: np.ndarray, side: int) -> torch.Tensor:
        """M_B ``(1, 1, side, side)``: the parser's or the landmarks' face mask, border smoothed.

        ``landmarks`` are in the pixels of a ``side``-px crop; ``mask_fn`` gets them rescaled
        to ``crop_image``'s pixels (its contract), and its mask is resized to ``side``.
        """
        from ..faces.masks import face_mask, gaussian_blur

        sigma = self.feather * side
        if self.mask_fn is not None:
            lm = (np.asarray(landmarks, dtype=np.float64) + 0.5) * (crop_image.width / side) - 0.5
            m = torch.as_tensor(self.mask_fn(crop_image, lm)).float()
            m = torch.nn.functional.interpolate(m.reshape(1, 1, *m.shape[-2:]), size=(side, side))
            return gaussian_blur(m, sigma).clamp(0, 1)
        return face_mask(landmarks, (side, side), feather=sigma)

    def _enhance(self, crops: list[Image.Image], landmarks: list[np.ndarray]) -> list:
        """The enhancer on the restored crops; one that takes ``landmarks`` (CodeFormer, to
        align each face) gets each crop's landmarks in its pixels."""
        import inspect

        try:
            takes = "landmarks" in inspect.signature(self.enhancer).parameters
        except (TypeError, ValueError):
            takes = False
        return self.enhancer(crops, landmarks=landmarks) if takes else self.enhancer(crops)

    def select(self, detections) -> list[int]:
        """Indices of the faces to restore: box's longer side below ``restore_below``."""
        boxes = detections.boxes
        sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        return [i for i, s in enumerate(sides.tolist()) if s < self.restore_below]

    def encode_identities(
        self, images: Sequence[ImageSource], names: Sequence[str] | None = None
    ) -> torch.Tensor | None:
        """F_id ``(K, tokens, dim)`` of K identity images with this restorer's ID encoder
        (``None`` without one). Encode once and pass the result as ``id_embeds`` to every
        :meth:`restore`: a face missing from an image fails here, before any output is written.
        ``names`` name the images in errors (e.g. the option the user typed and the file)."""
        if self.id_encoder is None:
            return None
        import inspect

        names = list(names or [f"id image {i + 1}" for i in range(len(images))])
        loaded = [load_image(im, name=n) for im, n in zip(images, names, strict=True)]
        try:  # FPGA's encode_identity(faces, names) names the image in its errors
            takes_names = "names" in inspect.signature(self.id_encoder).parameters
        except (TypeError, ValueError):
            takes_names = False
        return self.id_encoder(loaded, names) if takes_names else self.id_encoder(loaded)

    def _identity_images(
        self, id_images: Any, faces: list[Image.Image], people: list[int] | None
    ) -> tuple[list[Image.Image], list[str]]:
        """One identity image per face: the given one(s) (per person when ``people`` maps
        faces to persons), else the face itself."""
        from ..errors import InputError

        n = len(faces)
        if id_images is None:
            return faces, ["self"] * n
        items = list(id_images) if isinstance(id_images, (list, tuple)) else [id_images]
        if people is not None:
            if len(items) == 1:
                items = items * (max(people) + 1)
            if len(items) <= max(people):
                raise InputError(f"id_images: {len(items)} id images for person {max(people) + 1}")
            items, labels = [items[k] for k in people], [f"id image {k + 1}" for k in people]
        else:
            items = items * n if len(items) == 1 else items
            labels = ["id image"] * len(items)
        if len(items) != n:
            raise InputError(f"id_images: {len(items)} id images for {n} faces to restore")
        out, names = [], []
        for i, item in enumerate(items):
            if item is None:
                out.append(faces[i])
                names.append("self")
            else:
                out.append(load_image(item, name=labels[i]))
                names.append(labels[i])
        return out, names

    def _given_embeds(
        self, id_embeds: torch.Tensor, n: int, people: list[int] | None
    ) -> tuple[torch.Tensor, list[str]]:
        """Precomputed F_id per face: one for all, one per face, or one per person."""
        from ..errors import InputError

        e = torch.as_tensor(id_embeds)
        if e.ndim != 3:
            raise InputError(f"id_embeds: expected (K, tokens, dim), got {tuple(e.shape)}")
        if people is not None:
            if e.shape[0] == 1:
                return e.expand(n, -1, -1), ["id image 1"] * n
            if e.shape[0] <= max(people):
                raise InputError(f"id_embeds: {e.shape[0]} identities for person {max(people) + 1}")
            return e[people], [f"id image {k + 1}" for k in people]
        if e.shape[0] not in (1, n):
            raise InputError(f"id_embeds: {e.shape[0]} identities for {n} faces to restore")
        return e.expand(n, -1, -1), ["id image"] * n

    @staticmethod
    def _regions_at(regions: Any, size: tuple[int, int]) -> np.ndarray:
        """``regions`` ``(K, H, W)`` resized (nearest) to the image's ``size`` (W, H)."""
        r = torch.as_tensor(np.asarray(regions, dtype=np.float32))
        if r.ndim == 2:
            r = r[None]
        if r.ndim != 3:
            from ..errors import InputError

            raise InputError(f"regions: expected (K, H, W), got {tuple(r.shape)}")
        if tuple(r.shape[-2:]) != (size[1], size[0]):
            r = torch.nn.functional.interpolate(r[None], size=(size[1], size[0]))[0]
        return r.numpy()

    # ------------------------------------------------------------------ the work
    def restore(
        self,
        image: ImageSource,
        id_images: ImageSource | Sequence[ImageSource | None] | None = None,
        *,
        id_embeds: torch.Tensor | None = None,
        regions: Any = None,
        prompt: str | None = None,
        name: str | None = None,
    ) -> RestoreResult:
        """Restore every small face of ``image`` in one batch.

        Args:
            image: the image (any input the input gate accepts).
            id_images: the identity each face should have: one image for all faces, a list
                with one per restored face (left to right; ``None`` entries fall back to the face
                itself), or ``None`` (every face restores its own identity). With ``regions``:
                one per person, in the regions' order.
            id_embeds: F_id given directly instead of ``id_images`` (from
                :meth:`encode_identities`): ``(1, T, D)`` for every face, one per restored face,
                or with ``regions`` one per person.
            regions: ``(K, H, W)`` person regions in ``[0, 1]`` (resized to the image when
                their size differs). Each small face takes the identity of the person whose
                region covers most of its box (:func:`match_faces`); a face no region reaches
                is left untouched and a note says so.
            prompt: the prompt C (default: the restorer's).
            name: how the image is called in notes.
        """
        from ..faces.detect import detect

        if id_images is not None and id_embeds is not None:
            raise ValueError("restore: give id_images or id_embeds, not both")
        img = load_image(image, name=name)
        label = name or "image"
        found = detect(img, select="all", landmarks=68, raise_if_none=False, **self.detector)
        if len(found) == 0:
            return RestoreResult(img, notes=[f"{label}: no face found; passed through unchanged"])
        chosen = self.select(found)
        skipped = len(found) - len(chosen)
        if not chosen:
            return RestoreResult(
                img,
                skipped=skipped,
                notes=[
                    f"{label}: {len(found)} face(s), none smaller than "
                    f"{self.restore_below:g} px; unchanged"
                ],
            )
        notes: list[str] = []
        people: list[int] | None = None
        unmatched = 0
        if regions is not None:
            owner = match_faces(found.boxes[chosen].numpy(), self._regions_at(regions, img.size))
            lost = [i for i, k in zip(chosen, owner) if k is None]
            chosen = [i for i, k in zip(chosen, owner) if k is not None]
            people = [k for k in owner if k is not None]
            unmatched = len(lost)
            if lost:
                where = ", ".join(
                    "(" + ", ".join(f"{float(v):.0f}" for v in found.boxes[i]) + ")" for i in lost
                )
                notes.append(
                    f"{label}: {len(lost)} small face(s) at {where} lie in no person's face "
                    "region; left untouched"
                )
            if not chosen:
                return RestoreResult(img, skipped=skipped, notes=notes, unmatched=unmatched)
        res = self.resolution
        crops, conds, masks, boxes, paste_masks, faces = [], [], [], [], [], []
        landmarks_in_crops = []
        for i in chosen:
            box = found.boxes[i]
            crop = face_crop_box(box, self.crop_scale)
            lm = found.landmarks68[i].numpy()
            crop_img = crop_face(img, crop, res)
            lm_crop = crop.to_crop(lm, res)
            landmarks_in_crops.append(lm_crop)
            crops.append(crop_img)
            conds.append(self.landmark_renderer(lm_crop, (res, res)))
            masks.append(self.face_mask(crop_img, lm_crop, res))
            paste_masks.append(self.face_mask(crop_img, crop.to_crop(lm, crop.side), crop.side))
            boxes.append(crop)
            faces.append(tuple(float(v) for v in box))
        take_notes = getattr(self.mask_fn, "take_notes", None)  # a face parser's fallbacks
        if callable(take_notes):
            notes += [f"{label}: {note}" for note in take_notes()]
        if id_embeds is not None:
            id_embeds, identity = self._given_embeds(id_embeds, len(crops), people)
        else:
            identity_images, identity = self._identity_images(id_images, crops, people)
            if self.id_encoder is not None:
                id_embeds = self.id_encoder(identity_images)
            elif id_images is not None:
                notes.append(
                    f"{label}: this model has no ID encoder; the id image is not used "
                    "(restoration from landmarks, prompt and inversion only)"
                )
        restored = self.pipeline(
            prompt or self.prompt,
            crops,
            conds,
            torch.cat(masks),
            id_embeds=id_embeds,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            stats_region=self.stats_region,
        ).images
        if self.enhancer is not None:
            restored = list(self._enhance(list(restored), landmarks_in_crops))
            if len(restored) != len(boxes):
                raise RuntimeError(f"enhancer: {len(restored)} crops back for {len(boxes)} faces")
        out = img
        for crop, face_img, m in zip(boxes, restored, paste_masks):
            out = paste_back(out, face_img, crop, m)
        notes.append(
            f"{label}: restored {len(chosen)} face(s) smaller than {self.restore_below:g} px"
            + (f"; {skipped} larger face(s) untouched" if skipped else "")
            + (f"; then {getattr(self.enhancer, 'name', 'the enhancer')}" if self.enhancer else "")
        )
        result_faces = [
            RestoredFace(box=f, crop=c, identity=who) for f, c, who in zip(faces, boxes, identity)
        ]
        return RestoreResult(out, result_faces, skipped, notes, unmatched)
