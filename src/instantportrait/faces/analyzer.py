"""The face-analysis API in two levels: ``analyze`` for faces with crops and embeddings, and
``detect`` / ``landmarks`` / ``align`` / ``embed`` for custom pipelines (as facenet-pytorch).

By default detection is dlib's (HOG or MMOD) and crops are differentiable template
alignments (:func:`~.align.crop_faces`). ``reference=True`` makes the crops the reference
pipelines' own: insightface's ``norm_crop`` (ArcFace template, ``cv2.warpAffine`` sampling) on
the detector's five keypoints, and facenet-pytorch's MTCNN box crop (margin, 160 px) for the
``"facenet"`` template; pair it with ``detector=FaceDetectorConfig("scrfd", ...)`` or
``"mtcnn"`` for the papers' exact numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .align import crop_faces, get_template, norm_crop
from .base import IdentityEmbedder
from .detect import FaceDetections, Select, detect, detect_landmarks, images_to_arrays
from .detectors import FaceDetectorConfig

__all__ = ["Face", "FaceAnalyzer"]


@dataclass
class Face:
    """One analysed face.

    Attributes:
        box: ``(4,)`` ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive, image pixels.
        score: the detector's score.
        landmarks5: ``(5, 2)`` dlib 5-point landmarks (pixel-centre coordinates) or ``None``.
        landmarks68: ``(68, 2)`` iBUG landmarks or ``None``.
        keypoints: ``(5, 2)`` the five reference keypoints (eye centres, nose tip, mouth
            corners: SCRFD's, MTCNN's, or derived from the 68 landmarks) or ``None``.
        crop: ``(3, S, S)`` aligned crop in ``[0, 1]`` (the embedder's template) or ``None``.
        embedding: ``(D,)`` L2-normalised embedding or ``None``.
        descriptor: ``(D,)`` the embedder's raw output (dlib: compare with Euclidean
            distance < 0.6) or ``None``.
    """

    box: torch.Tensor
    score: float
    landmarks5: torch.Tensor | None = None
    landmarks68: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    crop: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    descriptor: torch.Tensor | None = None


def _image_tensor(image: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A float ``(1, 3, H, W)`` tensor: float tensors pass as they are (keeping gradients)."""
    if isinstance(image, torch.Tensor) and image.is_floating_point() and image.dim() in (3, 4):
        t = image if image.dim() == 4 else image.unsqueeze(0)
        if t.shape[1] == 3:
            return t
    arrays, _, _ = images_to_arrays(image)
    if len(arrays) != 1:
        raise ValueError("align: pass one image (the landmarks refer to it)")
    t = torch.from_numpy(np.ascontiguousarray(arrays[0])).permute(2, 0, 1).unsqueeze(0)
    return t.to(device=device, dtype=dtype) / 255.0


class FaceAnalyzer:
    """Detection, landmarks, alignment and embedding of faces, for any input type.

    Args:
        detector: a :class:`~.detectors.FaceDetectorConfig` or a detector name (``"hog"``,
            default; ``"mmod"``, ``"mtcnn"``; see :func:`~.detect.detect`).
        embedder: ``"dlib"`` (default), ``"facenet"``, ``"arcface"``, an
            :class:`~.base.IdentityEmbedder`, or ``None`` for no embeddings. Built on first
            use, so a detection-only analyzer loads no network.
        device: where crops and embeddings are computed (default CPU).
        dtype: the embedder's dtype (default float32).
        weights: the embedder's weight file (see :func:`~.embedders.get_embedder`; default
            ``None``).
        upsample: detector upsampling (default 1).
        select: which faces :meth:`analyze` returns: ``"all"`` (default), ``"largest"`` or a
            count; always ordered left to right, then top to bottom.
        min_size: smallest face box side in pixels (default 20).
        threshold: detector score threshold (default: the detector's, see ``detect``).
        template: the alignment template (default: the embedder's; ``"dlib"`` without one).
        crop_size: the crop side (default: the template's).
        reference: crop as the reference pipelines do (module docstring; not
            differentiable); default ``False``.
    """

    def __init__(
        self,
        detector: str | FaceDetectorConfig = "hog",
        embedder: str | IdentityEmbedder | None = "dlib",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weights: str | os.PathLike | None = None,
        upsample: int = 1,
        select: Select = "all",
        min_size: float = 20,
        threshold: float | None = None,
        template: str | None = None,
        crop_size: int | None = None,
        reference: bool = False,
    ) -> None:
        if not isinstance(detector, FaceDetectorConfig):
            detector = FaceDetectorConfig(detector, upsample=upsample, threshold=threshold)
        self.detector = detector
        self.reference = reference
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype or torch.float32
        self.weights = weights
        self.upsample = detector.upsample
        self.select = select
        self.min_size = min_size
        self.threshold = detector.threshold
        self._template = template
        self.crop_size = crop_size
        self._embedder_spec = embedder
        self._embedder: IdentityEmbedder | None = (
            embedder if isinstance(embedder, IdentityEmbedder) else None
        )
        if isinstance(embedder, IdentityEmbedder):
            self.embedder_name = type(embedder).__name__
        else:
            self.embedder_name = embedder or "none"

    @property
    def embedder(self) -> IdentityEmbedder | None:
        """The identity embedder (built on first access)."""
        if self._embedder is None and self._embedder_spec is not None:
            from .embedders import get_embedder

            self._embedder = get_embedder(
                self._embedder_spec, self.weights, device=self.device, dtype=self.dtype
            )
        return self._embedder

    @property
    def template(self) -> str:
        """The alignment template's name."""
        if self._template is not None:
            return self._template
        if self._embedder_spec is None:
            return "dlib"
        if isinstance(self._embedder_spec, str):
            return self._embedder_spec
        return self._embedder_spec.template

    def detect(self, images: Any, **kwargs: Any) -> FaceDetections | list[FaceDetections]:
        """:func:`~.detect.detect` with this analyzer's settings; ``kwargs`` override them."""
        options: dict[str, Any] = dict(
            method=self.detector,
            min_size=self.min_size,
            select=self.select,
        )
        options.update(kwargs)
        return detect(images, **options)

    def landmarks(
        self, image: Any, boxes: torch.Tensor | np.ndarray, points: int = 68
    ) -> torch.Tensor:
        """dlib landmarks ``(N, points, 2)`` (``points`` 68 or 5) for ``boxes`` in ``image``."""
        arrays, _, _ = images_to_arrays(image)
        if len(arrays) != 1:
            raise ValueError("landmarks: pass one image (the boxes refer to it)")
        return detect_landmarks(arrays[0], boxes, points)

    def align(
        self,
        image: Any,
        landmarks: torch.Tensor,
        template: str | None = None,
        size: int | None = None,
        points: str = "dlib",
    ) -> torch.Tensor:
        """Aligned crops ``(N, 3, S, S)`` in ``[0, 1]`` of the faces given by ``landmarks``.

        A float tensor image (``(3, H, W)`` or ``(1, 3, H, W)`` in ``[0, 1]``) is used as it
        is, so gradients reach its pixels; any other input goes through the input gate.
        ``landmarks``: ``(N, 5 or 68, 2)``; ``points``: ``"dlib"`` (dlib's 5 or 68) or
        ``"keypoints"`` (the five reference keypoints). ``template``/``size`` default to the
        analyzer's.
        """
        tpl = template or self.template
        img = _image_tensor(image, self.device, torch.float32)
        lm = torch.as_tensor(landmarks, dtype=torch.float32)
        if lm.dim() == 2:
            lm = lm.unsqueeze(0)
        if lm.shape[0] == 0:
            s = size or self.crop_size or get_template(tpl).size
            return img.new_zeros(0, 3, s, s)
        batch = img.expand(lm.shape[0], -1, -1, -1)
        return crop_faces(batch, lm.to(img.device), tpl, size or self.crop_size, points=points)

    def reference_crops(
        self, image: Any, det: FaceDetections, template: str | None = None, size: int | None = None
    ) -> torch.Tensor:
        """The reference pipelines' crops ``(N, 3, S, S)`` in ``[0, 1]`` (not differentiable):
        ``norm_crop`` on the keypoints for the ArcFace template, facenet-pytorch's box crop
        (margin 0, 160 px) for ``"facenet"``."""
        tpl = template or self.template
        arrays, _, _ = images_to_arrays(image)
        if len(arrays) != 1:
            raise ValueError("reference_crops: pass one image (the detections refer to it)")
        if tpl == "facenet":
            from .mtcnn import facenet_crop

            side = size or self.crop_size or 160
            crops = [facenet_crop(arrays[0], box, side) for box in det.boxes]
        elif tpl == "arcface":
            if det.keypoints is None:
                raise ValueError("reference_crops: the detections have no keypoints")
            side = size or self.crop_size or 112
            crops = [norm_crop(arrays[0], kps.numpy(), side) for kps in det.keypoints]
        else:
            raise ValueError(f"reference_crops: no reference crop for template {tpl!r}")
        if not crops:
            return torch.zeros(0, 3, side, side)
        stack = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
        return stack.to(self.device, torch.float32) / 255.0

    def embed(self, crops: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embeddings ``(N, D)`` of aligned crops (L2-normalised unless ``normalize=False``)."""
        emb = self.embedder
        if emb is None:
            raise ValueError("embed: this analyzer has no embedder (embedder=None)")
        crops = crops.to(self.device, self.dtype)
        return emb.embed(crops) if normalize else emb(crops)

    def _preferred_landmarks(
        self, det: FaceDetections, tpl: str
    ) -> tuple[torch.Tensor | None, str]:
        # dlib's chips are defined on its 5 points; the other templates on the five
        # keypoints (the detector's own, or the 68 landmarks' eye centres, nose tip, mouth
        # corners).
        if tpl == "dlib":
            for lm in (det.landmarks5, det.landmarks68):
                if lm is not None:
                    return lm, "dlib"
        if det.keypoints is not None:
            return det.keypoints, "keypoints"
        return (det.landmarks68 if det.landmarks68 is not None else det.landmarks5), "dlib"

    def analyze(self, image: Any, select: Select | None = None) -> list[Face] | list[list[Face]]:
        """Detect, align and embed every selected face of one image (a batch: one list each).

        Raises :class:`~.detect.NoFaceFoundError` naming the image when it has no face.
        """
        found = self.detect(image, select=select or self.select, landmarks=True)
        if isinstance(found, list):
            return [self._faces(image_i, det) for image_i, det in zip(image, found)]
        return self._faces(image, found)

    def _faces(self, image: Any, det: FaceDetections) -> list[Face]:
        tpl = self.template
        crops = emb = raw = None
        lm, points = self._preferred_landmarks(det, tpl)
        if self.reference and len(det) and tpl in ("arcface", "facenet"):
            crops = self.reference_crops(image, det, tpl)
        elif lm is not None and len(det):
            crops = self.align(image, lm, tpl, points=points)
        if crops is not None and self._embedder_spec is not None:
            with torch.no_grad():
                raw = self.embed(crops, normalize=False).float()
            emb = torch.nn.functional.normalize(raw, dim=-1)
        faces = []
        for i in range(len(det)):
            faces.append(
                Face(
                    box=det.boxes[i],
                    score=float(det.scores[i]),
                    landmarks5=None if det.landmarks5 is None else det.landmarks5[i],
                    landmarks68=None if det.landmarks68 is None else det.landmarks68[i],
                    keypoints=None if det.keypoints is None else det.keypoints[i],
                    crop=None if crops is None else crops[i],
                    embedding=None if emb is None else emb[i],
                    descriptor=None if raw is None else raw[i],
                )
            )
        return faces
