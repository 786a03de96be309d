"""FaceA-Net's tuning data (§3.2): each photo detected, cropped to head and shoulders, and
masked per task (the whole face and the four attributes) from landmarks or Grounding-DINO
boxes; :class:`PhotoCrops` serves them to the resumable sampler with a mirror-aware flip."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models.feat_embeddings import TASKS

if TYPE_CHECKING:
    from .faceanet_config import FaceANetDataConfig

logger = logging.getLogger(__name__)

__all__ = ["PhotoCrops", "check_one_person", "collate", "grounding_masks", "prepare_crops"]

#: dlib's same-person threshold on the Euclidean distance of its 128-d descriptors
SAME_PERSON_DISTANCE = 0.6


class PhotoCrops(torch.utils.data.Dataset):
    """The crops and their task masks, indexed by ``(epoch, index)``.

    Its length is ``repeats x`` the number of photos so that a batch of 4 can be drawn from 3
    photos: the resumable sampler shuffles this virtual list each epoch (photos drawn
    uniformly, each as often as the others).
    """

    def __init__(self, images, masks, repeats: int, random_flip: bool, seed: int):
        self.images, self.masks = images, masks
        self.repeats, self.random_flip, self.seed = repeats, random_flip, seed

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        i = index % len(self.images)
        image, masks = self.images[i], self.masks[i]
        if self.random_flip:
            g = torch.Generator().manual_seed(self.seed * 7_919 + epoch * 104_729 + index)
            if bool(torch.rand((), generator=g) < 0.5):
                image, masks = image.flip(-1), masks.flip(-1)
                # the subject's left eye is now where a right eye would be
                order = [TASKS.index(t) for t in ("face", "right_eye", "left_eye", "nose", "mouth")]
                masks = masks[order]
        return {"image": image, "masks": masks}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def grounding_masks(
    detector, crop, size: tuple[int, int], dilate: float
) -> tuple[torch.Tensor, list[str]]:
    """Box masks of a crop from Grounding-DINO; parts it misses use the landmark boxes.

    Returns the masks ``(5, 1, H, W)`` and the names of the parts that fell back.
    """
    from ..data.face_crops import box_mask, part_boxes

    found = detector.boxes(crop.image)
    fallback = part_boxes(crop.landmarks68, dilate)
    face = found["face"] if found["face"] is not None else fallback["face"]
    grow = dilate * float(max(face[2] - face[0], face[3] - face[1]))
    masks, missed = [], []
    for task in TASKS:
        box = found[task]
        if box is None:
            missed.append(task)
            box = fallback[task]
        else:
            box = np.asarray(box) + np.array([-grow, -grow, grow, grow])
        masks.append(box_mask(box, size))
    return torch.stack(masks), missed


def check_one_person(
    images: list, names: list[str], threshold: float = SAME_PERSON_DISTANCE, detector="hog"
) -> list[tuple[int, int, float]]:
    """Refuse tuning photos that show different people.

    Every pair's dlib descriptor distance (the largest face of each photo) must be below
    ``threshold`` (dlib's 0.6). Raises :class:`~instantportrait.errors.InputError` naming the
    most distant pair; returns every pair's ``(i, j, distance)`` otherwise.
    """
    from ..errors import InputError
    from ..faces.analyzer import FaceAnalyzer

    if len(images) < 2:
        return []
    analyzer = FaceAnalyzer(detector=detector, embedder="dlib")
    desc = [analyzer.analyze(im, select="largest")[0].descriptor for im in images]
    pairs = [
        (i, j, float(torch.linalg.vector_norm(desc[i] - desc[j])))
        for i in range(len(desc))
        for j in range(i + 1, len(desc))
    ]
    i, j, worst = max(pairs, key=lambda p: p[2])
    if worst >= threshold:
        raise InputError(
            f"{names[i]} and {names[j]}: they look like different people (dlib face distance "
            f"{worst:.2f} >= {threshold}); FaceA-Net tunes on photos of one person "
            "(--allow-mixed-identities / data.allow_mixed_identities=true to tune anyway)"
        )
    return pairs


def prepare_crops(data: FaceANetDataConfig, device: torch.device | str = "cpu"):
    """Detect, crop and mask each photo; returns (images [-1,1], masks, FaceCrop list).

    The photos must show one person (:func:`check_one_person`) unless
    ``data.allow_mixed_identities``."""
    from ..data.face_crops import head_and_shoulders_crop, task_masks
    from ..faces.detect import NoFaceFoundError, detect
    from ..faces.detectors import FaceDetectorConfig
    from ..io import load_image

    detector = None
    if data.mask_source == "grounding-dino":
        from ..data.grounding_boxes import GroundingDinoBoxes

        detector = GroundingDinoBoxes(data.grounding_dino, device=device)
    images, masks, crops, photos, names = [], [], [], [], []
    for k, src in enumerate(data.images):
        name = f"--images[{k}] {src}"
        img = load_image(src, name=name)
        photos.append(img)
        names.append(name)
        try:
            det = detect(
                img,
                method=FaceDetectorConfig.from_spec(data.detector),
                select="largest",
                landmarks=68,
            )
        except NoFaceFoundError as exc:
            reason = str(exc).partition(": ")[2]
            raise NoFaceFoundError(f"{name}: {reason} (FaceA-Net tunes on face photos)") from None
        crop = head_and_shoulders_crop(
            img, det.landmarks68[0].numpy(), resolution=data.resolution, scale=data.crop_scale
        )
        arr = np.asarray(crop.image, dtype=np.float32) / 127.5 - 1.0
        images.append(torch.from_numpy(arr).permute(2, 0, 1).contiguous())
        size = (data.resolution, data.resolution)
        if detector is not None:
            m, missed = grounding_masks(detector, crop, size, data.mask_dilate)
            if missed:
                logger.warning(
                    "%s: Grounding-DINO found no %s; landmark boxes used", name, ", ".join(missed)
                )
        else:
            m = task_masks(crop.landmarks68, size, shape=data.mask_shape, dilate=data.mask_dilate)
        masks.append(m)
        crops.append(crop)
    if not data.allow_mixed_identities:
        check_one_person(photos, names, detector=data.detector)
    return images, masks, crops
