"""The training dataset over pair sources: resize, paired augmentation, conditioning dropout.

Every random choice of an example (flip, crop, dropout) comes from a generator seeded by
``(seed, epoch, index)``, so an example is the same whichever worker or rank reads it and
however often training is interrupted and resumed: resume is exact without saving any
data-loader state beyond the position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..io import ResolutionPolicy, load_image
from .pairs import PairSource

#: dlib's 5-point order: 0-1 corners of the image-right eye (outer, inner), 2-3 of the
#: image-left eye (outer, inner), 4 the base of the nose. A horizontal flip swaps the eyes.
FLIP_5_POINTS = (2, 3, 0, 1, 4)
#: The detectors' five keypoints' order: 0-1 the eye centres (image-left, image-right), 2 the
#: nose tip, 3-4 the mouth corners (image-left, image-right). A flip swaps each pair.
FLIP_KEYPOINTS = (1, 0, 2, 4, 3)
FLIPS = {"dlib": FLIP_5_POINTS, "keypoints": FLIP_KEYPOINTS}

#: ``PIL image -> (5, 2) points | None``. A function with a ``points`` attribute of
#: ``"keypoints"`` (:func:`detect_face_points` on SCRFD or MTCNN) gives the detector's five
#: keypoints; any other gives dlib's 5 points.
LandmarkFn = Callable[[Image.Image], "np.ndarray | None"]


@dataclass(frozen=True)
class ConditioningDropout:
    """InstructPix2Pix's conditioning dropout (Brooks et al. 2023, §3.3): text, image, both."""

    text: float = 0.05
    image: float = 0.05
    both: float = 0.05

    def __post_init__(self) -> None:
        for name in ("text", "image", "both"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise InputError(f"dropout.{name}: a probability in [0, 1], got {p}")
        if self.text + self.image + self.both > 1.0:
            raise InputError("dropout: text + image + both must not exceed 1")

    def draw(self, u: float) -> tuple[bool, bool]:
        """(drop_text, drop_image) for a uniform draw ``u`` in [0, 1)."""
        if u < self.text:
            return True, False
        if u < self.text + self.both:
            return True, True
        if u < self.text + self.both + self.image:
            return False, True
        return False, False


def detect_landmarks5(detector: Any = None) -> LandmarkFn:
    """A ``PIL image -> (5, 2) landmarks | None`` function on the face stack: dlib's 5 points
    of the largest face found by ``detector`` (a ``FaceDetectorConfig`` or its spec, default
    dlib's HOG); ``None`` when none is found."""
    from ..faces.detect import NoFaceFoundError, detect
    from ..faces.detectors import FaceDetectorConfig

    config = FaceDetectorConfig.from_spec(detector)

    def find(image: Image.Image) -> np.ndarray | None:
        try:
            faces = detect(image, method=config, select="largest", landmarks=5)
        except NoFaceFoundError:
            return None
        return np.asarray(faces.landmarks5[0], dtype=np.float32)

    return find


def detect_face_points(detector: Any = None) -> LandmarkFn:
    """The points the trainers crop faces from, on the face stack: with SCRFD or MTCNN their
    own five keypoints of the largest face (the returned function's ``points`` is
    ``"keypoints"``); with dlib's detectors dlib's 5 points, as :func:`detect_landmarks5`
    (``points`` is ``"dlib"``). ``None`` when no face is found."""
    from ..faces.detect import NoFaceFoundError, detect
    from ..faces.detectors import FaceDetectorConfig

    config = FaceDetectorConfig.from_spec(detector)
    if config.is_dlib:
        find = detect_landmarks5(config)
        find.points = "dlib"  # type: ignore[attr-defined]
        return find

    def find_keypoints(image: Image.Image) -> np.ndarray | None:
        try:
            faces = detect(image, method=config, select="largest", landmarks="keypoints")
        except NoFaceFoundError:
            return None
        return np.asarray(faces.keypoints[0], dtype=np.float32)

    find_keypoints.points = "keypoints"  # type: ignore[attr-defined]
    return find_keypoints


def has_landmarks(landmarks: Any) -> bool:
    """True for 5 given points that are not all zero (all zero is the batch's 'no face')."""
    if landmarks is None:
        return False
    arr = np.asarray(landmarks, dtype=np.float32)
    return arr.shape == (5, 2) and bool(np.abs(arr).sum() > 0)


@dataclass
class FaceCount:
    """How many inputs of a pair source show a face, as the trainers will see them."""

    total: int = 0
    #: rows whose landmarks (or keypoints) were given in the data
    given: int = 0
    #: rows whose face the detector found
    detected: int = 0
    #: keys (or row numbers) of rows showing no face
    faceless: list[str] = field(default_factory=list)

    @property
    def with_face(self) -> int:
        return self.given + self.detected

    def summary(self) -> str:
        return (
            f"{len(self.faceless)} of {self.total} inputs show no face "
            f"({self.given} with given landmarks, {self.detected} detected)"
        )


def count_faces(
    source,
    resolution: int | None = None,
    landmark_fn: LandmarkFn | None = None,
    progress: bool = True,
    detector: Any = None,
) -> FaceCount:
    """Count the inputs of ``source`` that show no face, the way training decides it.

    A row with landmarks or keypoints has a face; a row without is run through ``landmark_fn``
    (default: :func:`detect_face_points` of ``detector``, a ``FaceDetectorConfig`` or its
    spec, default dlib's HOG: what the trainers run with the same ``data.detector``) on its
    input resized to ``resolution`` (long side; the training resolution, since small faces
    are missed at small sizes; ``None`` keeps the stored size).
    Unreadable rows count as faceless. ``instantportrait data check`` reports this.
    """
    from tqdm.auto import tqdm

    if landmark_fn is not None and detector is not None:
        raise ValueError("count_faces: give landmark_fn or detector, not both")
    find = landmark_fn
    policy = ResolutionPolicy(long_side=resolution) if resolution else None
    count = FaceCount()
    for i in tqdm(range(len(source)), desc="faces", disable=not progress, unit="pair"):
        count.total += 1
        try:
            ex = source[i]
        except InputError:
            count.faceless.append(str(i))
            continue
        key = str(ex.key if getattr(ex, "key", None) is not None else i)
        if has_landmarks(getattr(ex, "keypoints", None)) or has_landmarks(ex.landmarks):
            count.given += 1
            continue
        if find is None:
            find = detect_face_points(detector)
        try:
            image = load_image(ex.input_bytes, name=source.describe(i))
        except InputError:
            count.faceless.append(key)
            continue
        if policy is not None:
            image = policy.apply(image)
        if find(image) is None:
            count.faceless.append(key)
        else:
            count.detected += 1
    return count


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one example's random choices (flip, crop, dropout)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB to a ``(3, H, W)`` float tensor in [-1, 1]."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class PairDataset(torch.utils.data.Dataset):
    """Pairs as tensors, ready for IDE-Net / IPNet training.

    Args:
        source: a :class:`~instantportrait.data.pairs.ManifestSource` or ``ShardSource``.
        resolution: long side of both images (the input gate's resolution policy; the target
            is resized to the input's size).
        random_flip: flip input, target and landmarks together with probability 0.5.
        crop_jitter: scale up by up to this fraction, then crop back at a random position,
            the same crop for input and target (0 disables).
        dropout: conditioning dropout probabilities.
        seed: seeds every example's random choices with ``(seed, epoch, index)``.
        landmark_fn: called on the resized input when the example has neither keypoints nor
            landmarks (e.g. :func:`detect_face_points`); returns ``(5, 2)`` points or ``None``
            when no face is found: the detector's keypoints when its ``points`` attribute is
            ``"keypoints"``, else dlib's 5.
        square: crop inputs to a centred square first (so batches share one size).
        size: ``(width, height)``: train at this exact, possibly non-square size instead (the
            input is centre-cropped to its aspect ratio, then resized; ``resolution`` and
            ``square`` are then unused). Landmarks follow every crop, resize and flip.

    A row's ``keypoints`` (the detector's own five points) are used when present, else its
    ``landmarks`` (dlib's 5), else ``landmark_fn``'s points.

    Items are dicts: ``input``, ``target`` (``(3, H, W)`` in [-1, 1]), ``instruction`` (the
    empty string when text is dropped), ``drop_image`` (bool), ``landmarks`` (``(5, 2)`` float,
    zeros when absent), ``is_keypoints`` (bool: ``landmarks`` holds the detector's keypoints,
    crop with ``points="keypoints"``; else dlib's 5), ``has_face`` (bool), ``key``, ``index``.
    """

    def __init__(
        self,
        source: PairSource,
        resolution: int = 256,
        random_flip: bool = True,
        crop_jitter: float = 0.0,
        dropout: ConditioningDropout | None = None,
        seed: int = 0,
        landmark_fn: LandmarkFn | None = None,
        square: bool = True,
        size: tuple[int, int] | None = None,
    ):
        self.source = source
        self.policy = ResolutionPolicy(long_side=resolution)
        self.random_flip = random_flip
        self.crop_jitter = float(crop_jitter)
        self.dropout = dropout or ConditioningDropout()
        self.seed = int(seed)
        self.epoch = 0
        self.landmark_fn = landmark_fn
        self.square = square
        if size is not None and (len(size) != 2 or min(size) < 8 or any(v % 8 for v in size)):
            raise InputError(f"size: (width, height), multiples of 8; got {size}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self._landmark_cache: dict[int, np.ndarray | None] = {}

    def set_epoch(self, epoch: int) -> None:
        """Examples of a new epoch draw new augmentations."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def _decode(self, data: bytes, what: str, index: int) -> Image.Image:
        try:
            return load_image(data, name=what)
        except InputError as exc:
            raise InputError(f"{self.source.describe(index)}: {exc}") from None

    def _square_box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        return self._aspect_box(size, 1.0)

    @staticmethod
    def _aspect_box(size: tuple[int, int], aspect: float) -> tuple[int, int, int, int]:
        """The largest centred box of ``aspect`` = width / height inside an image of ``size``."""
        w, h = size
        if w / h > aspect:
            cw, ch = max(1, int(round(h * aspect))), h
        else:
            cw, ch = w, max(1, int(round(w / aspect)))
        left, top = (w - cw) // 2, (h - ch) // 2
        return left, top, left + cw, top + ch

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """``dataset[i]`` (current epoch) or ``dataset[(epoch, i)]`` (stateless, for workers)."""
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        ex = self.source[index]
        rng = example_rng(self.seed, epoch, index)
        image = self._decode(ex.input_bytes, "input", index)
        target = self._decode(ex.target_bytes, "target", index)
        # all-zero landmarks are the batch format's "no face": treat them as absent; a row's
        # detector keypoints come before its dlib landmarks
        points = "dlib"
        landmarks = np.asarray(ex.landmarks, np.float32) if has_landmarks(ex.landmarks) else None
        keypoints = getattr(ex, "keypoints", None)  # pair sources of other formats have none
        if has_landmarks(keypoints):
            points, landmarks = "keypoints", np.asarray(keypoints, np.float32)

        # 1. geometry shared by input, target and landmarks: square crop, resize
        if self.size is not None:
            box = self._aspect_box(image.size, self.size[0] / self.size[1])
        elif self.square:
            box = self._square_box(image.size)
        else:
            box = (0, 0, *image.size)
        crop_w, crop_h = box[2] - box[0], box[3] - box[1]
        out_w, out_h = self.size or self.policy.target_size(crop_w, crop_h)
        target_box = self._scaled_box(box, image.size, target.size)
        image = image.crop(box).resize((out_w, out_h), Image.Resampling.LANCZOS)
        target = target.crop(target_box).resize((out_w, out_h), Image.Resampling.LANCZOS)
        if landmarks is not None:
            landmarks = (landmarks - np.array(box[:2], dtype=np.float32)) * np.array(
                [out_w / crop_w, out_h / crop_h], dtype=np.float32
            )
        elif self.landmark_fn is not None:
            points = getattr(self.landmark_fn, "points", "dlib")
            if index not in self._landmark_cache:
                found = self.landmark_fn(image)
                self._landmark_cache[index] = (
                    None if found is None else np.asarray(found, np.float32)
                )
            landmarks = self._landmark_cache[index]
            landmarks = None if landmarks is None else landmarks.copy()

        # 2. paired augmentation
        if self.crop_jitter > 0:
            scale = 1.0 + rng.uniform(0.0, self.crop_jitter)
            big = (int(round(out_w * scale)), int(round(out_h * scale)))
            x0 = int(rng.integers(0, big[0] - out_w + 1))
            y0 = int(rng.integers(0, big[1] - out_h + 1))
            crop = (x0, y0, x0 + out_w, y0 + out_h)
            image = image.resize(big, Image.Resampling.LANCZOS).crop(crop)
            target = target.resize(big, Image.Resampling.LANCZOS).crop(crop)
            if landmarks is not None:
                landmarks = landmarks * scale - np.array([x0, y0], dtype=np.float32)
        else:
            rng.uniform(), rng.integers(0, 1), rng.integers(0, 1)  # keep the stream aligned
        if self.random_flip and rng.uniform() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            target = target.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if landmarks is not None:
                landmarks = landmarks[list(FLIPS[points])].copy()
                landmarks[:, 0] = out_w - 1 - landmarks[:, 0]

        # 3. conditioning dropout
        drop_text, drop_image = self.dropout.draw(float(rng.uniform()))
        has_face = has_landmarks(landmarks)
        return {
            "input": pil_to_tensor(image),
            "target": pil_to_tensor(target),
            "instruction": "" if drop_text else ex.instruction,
            "drop_image": drop_image,
            "landmarks": torch.from_numpy(landmarks) if has_face else torch.zeros(5, 2),
            "is_keypoints": has_face and points == "keypoints",
            "has_face": has_face,
            "key": ex.key,
            "index": index,
        }

    @staticmethod
    def _scaled_box(
        box: tuple[int, int, int, int], size: tuple[int, int], other: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """The input's crop box mapped onto a target of another size (proportionally)."""
        sx, sy = other[0] / size[0], other[1] / size[1]
        return (
            int(round(box[0] * sx)),
            int(round(box[1] * sy)),
            int(round(box[2] * sx)),
            int(round(box[3] * sy)),
        )


def collate_pairs(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of :class:`PairDataset` items into a batch."""
    sizes = {tuple(it["input"].shape) for it in items}
    if len(sizes) > 1:
        raise InputError(
            f"batch: examples of different sizes {sorted(sizes)}; use square=True or a size"
        )
    return {
        "input": torch.stack([it["input"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "instruction": [it["instruction"] for it in items],
        "drop_image": torch.tensor([it["drop_image"] for it in items]),
        "landmarks": torch.stack([it["landmarks"] for it in items]),
        "is_keypoints": torch.tensor([it["is_keypoints"] for it in items]),
        "has_face": torch.tensor([it["has_face"] for it in items]),
        "key": [it["key"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
    }
