"""Face-part boxes from Grounding-DINO (Liu et al. 2023), FaceA-Net's own mask provider.

Optional: used when the user provides Grounding-DINO weights (a local folder in the
``transformers`` format, e.g. a copy of ``IDEA-Research/grounding-dino-tiny``); the default
provider is the face stack's landmarks (:mod:`instantportrait.data.face_crops`).

The phrases are "face", "eye", "nose", "mouth" (one query each). Eyes are detected together
and assigned by position, as the spec recommends: of the two best "eye" boxes inside the face
box, the one further right *in the image* is the subject's **left** eye (the project's one
convention, :mod:`instantportrait.faces.masks`). A part that is not found falls back to the
landmark box (the caller decides).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import ModelNotFoundError
from ..models.feat_embeddings import TASKS

PHRASES: dict[str, str] = {"face": "face", "eye": "eye", "nose": "nose", "mouth": "mouth"}
Detections = dict[str, tuple[np.ndarray, np.ndarray]]


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3])


def assign_parts(found: Detections) -> dict[str, np.ndarray | None]:
    """``{task: box or None}`` from per-phrase ``(boxes (N, 4), scores (N,))``.

    The face is the best "face" box; each part is its best box whose centre lies inside the
    face box (any box when no face was found); the two best eye boxes are split by x.
    """

    def best(phrase: str, within: np.ndarray | None, k: int = 1) -> list[np.ndarray]:
        boxes, scores = found.get(phrase, (np.zeros((0, 4)), np.zeros(0)))
        order = np.argsort(-np.asarray(scores), kind="stable")
        keep = [
            np.asarray(boxes[i], dtype=np.float64)
            for i in order
            if within is None or _inside(_centre(boxes[i]), within)
        ]
        return keep[:k]

    faces = best("face", None)
    face = faces[0] if faces else None
    out: dict[str, np.ndarray | None] = {t: None for t in TASKS}
    out["face"] = face
    for task in ("nose", "mouth"):
        hit = best(task, face)
        out[task] = hit[0] if hit else None
    eyes = best("eye", face, k=2)
    if len(eyes) == 2:
        right_img, left_img = sorted(eyes, key=lambda b: _centre(b)[0])
        out["left_eye"], out["right_eye"] = left_img, right_img  # subject's left = image right
    elif len(eyes) == 1 and face is not None:
        side = "left_eye" if _centre(eyes[0])[0] > _centre(face)[0] else "right_eye"
        out[side] = eyes[0]
    return out


class GroundingDinoBoxes:
    """Grounding-DINO on local weights: ``boxes(image) -> {task: box or None}``.

    Args:
        path: a folder with the model and its processor (``transformers`` format).
        device: where the model runs (default CPU).
        box_threshold / text_threshold: Grounding-DINO's thresholds (default 0.25 / 0.25).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        box_threshold: float = 0.25,
        text_threshold: float = 0.25,
    ):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        if not os.path.isdir(path):
            raise ModelNotFoundError(
                f"data.grounding_dino {path}: no such folder (a Grounding-DINO model folder in "
                "the transformers format, e.g. a download of IDEA-Research/grounding-dino-tiny)"
            )
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"data.grounding_dino {path}: not a Grounding-DINO folder ({exc})"
            ) from None
        self.model.requires_grad_(False).eval().to(device)
        self.device = torch.device(device)
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    @torch.no_grad()
    def detect(self, image: Any, phrase: str) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(N, 4)`` (x0, y0, x1, y1 pixels) and scores of ``phrase`` in a PIL image."""
        inputs = self.processor(images=image, text=f"{phrase}.", return_tensors="pt")
        inputs = inputs.to(self.device)
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[image.size[::-1]],
        )[0]
        return result["boxes"].cpu().numpy(), result["scores"].cpu().numpy()

    def boxes(self, image: Any) -> dict[str, np.ndarray | None]:
        """``{task: box or None}`` of :data:`TASKS` in ``image``'s pixels."""
        return assign_parts({p: self.detect(image, q) for p, q in PHRASES.items()})
