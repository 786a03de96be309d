"""Building FPGA's portrait dataset (spec §1) from a folder of photos.

:func:`build_portraits` fills a manifest folder (the format: :mod:`.portraits`) with the face
stack: detection, 68 landmarks, the aligned face crop and the face-region mask; keypoints
from sidecar JSON files or a user-provided pose function; captions from sidecar ``.txt``
files, a ``captions.jsonl`` or a user-provided captioner. Every photo that fails a filter is
counted by reason (:data:`REASONS`, :class:`BuildReport`) and listed in ``rejected.jsonl``,
never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import list_images, load_image
from .filters import laplacian_variance
from .portraits import FORMAT, MANIFEST, META

#: rejection reasons, in report order
REASONS = (
    "unreadable",
    "too_small",
    "blurry",
    "duplicate",
    "no_face",
    "multiple_faces",
    "face_too_small",
    "no_caption",
    "bad_keypoints",
)


@dataclass
class BuildReport:
    """What :func:`build_portraits` did: rows kept, rejections counted by reason."""

    seen: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    rejections: list[dict[str, str]] = field(default_factory=list)

    def reject(self, path: Path, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        self.rejections.append({"file": str(path), "reason": reason, "detail": detail})

    def summary(self) -> str:
        parts = [f"{r} {self.rejected[r]}" for r in REASONS if self.rejected[r]]
        rej = sum(self.rejected.values())
        return f"{self.seen} photos, {self.kept} kept, {rej} rejected" + (
            f" ({', '.join(parts)})" if parts else ""
        )


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey image (low = blurry): the pair filter's focus
    measure (:func:`.filters.laplacian_variance`) over the whole photo."""
    return laplacian_variance(np.asarray(image.convert("L")))


def _load_captions(src: Path) -> dict[str, str]:
    path = src / "captions.jsonl"
    out: dict[str, str] = {}
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    out[str(row["file"])] = str(row["caption"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    msg = f"{path}:{n}: expected {{'file': ..., 'caption': ...}}"
                    raise InputError(msg) from None
    return out


def _sidecar_keypoints(photo: Path, keypoints_dir: Path | None) -> Path | None:
    names = [photo.with_suffix(".json"), photo.with_name(photo.stem + ".keypoints.json")]
    if keypoints_dir is not None:
        names = [keypoints_dir / f"{photo.stem}.json", *names]
    return next((p for p in names if p.is_file()), None)


def check_face_template(name: str, flag: str = "--face-template") -> str:
    """``name`` is an alignment template of the face stack (checked before any detector runs)."""
    from ..faces.align import TEMPLATES

    if name not in TEMPLATES:
        raise InputError(
            f"{flag} {name!r}: unknown alignment template; one of {', '.join(TEMPLATES)}"
        )
    return name


def build_portraits(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    min_side: int = 512,
    min_face: int = 64,
    min_sharpness: float = 0.0,
    single_face: bool = True,
    face_template: str = "arcface",
    face_size: int = 224,
    keypoints_dir: str | os.PathLike | None = None,
    pose_fn: Callable[[Image.Image], np.ndarray] | None = None,
    captioner: Callable[[Image.Image], str] | None = None,
    default_caption: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    detector: Any = None,
) -> BuildReport:
    """Fill a portrait manifest folder ``output`` (which must not exist) from photos in ``source``.

    Filters (each rejection counted by reason, see :data:`REASONS`): unreadable files, short
    side < ``min_side``, Laplacian variance < ``min_sharpness``, exact duplicates, no face,
    several faces (``single_face``), face box side < ``min_face``, no caption, keypoints
    that do not parse. Captions: ``NAME.txt`` beside the photo, ``captions.jsonl`` in
    ``source``, ``captioner(image)``, then ``default_caption``. Keypoints: ``NAME.json`` /
    ``NAME.keypoints.json`` beside the photo or in ``keypoints_dir``, else ``pose_fn(image)``,
    else none (the row then serves the landmark stage only). ``detector``: a
    ``FaceDetectorConfig`` or detector name (default dlib's HOG); the face crop of a template
    other than dlib's is fitted on its five keypoints (SCRFD's, MTCNN's or the 68 landmarks').
    """
    from tqdm.auto import tqdm

    from ..conditions import load_keypoints
    from ..faces.detect import detect
    from ..faces.masks import face_mask
    from ..models.resampler import align_face
    from ..writer import atomic_directory

    check_face_template(face_template, "face_template")
    src = Path(source)
    if not src.is_dir():
        raise InputError(f"{src}: photo folder not found")
    photos = list_images([src])
    captions = _load_captions(src)
    kp_dir = Path(keypoints_dir) if keypoints_dir else None
    report = BuildReport()
    seen_hashes: set[str] = set()
    with atomic_directory(output, overwrite=overwrite) as tmp:
        for sub in ("images", "faces", "masks"):
            (tmp / sub).mkdir()
        rows = []
        for photo in tqdm(photos, desc="portraits", unit="photo", disable=not progress):
            report.seen += 1
            try:
                data = photo.read_bytes()
                img = load_image(data, name=str(photo))
            except (InputError, OSError) as exc:
                report.reject(photo, "unreadable", str(exc))
                continue
            if min(img.size) < min_side:
                report.reject(photo, "too_small", f"{img.width}x{img.height} < {min_side}")
                continue
            if min_sharpness > 0 and sharpness(img) < min_sharpness:
                report.reject(photo, "blurry")
                continue
            digest = hashlib.sha256(np.asarray(img).tobytes()).hexdigest()
            if digest in seen_hashes:
                report.reject(photo, "duplicate")
                continue
            seen_hashes.add(digest)
            faces = detect(
                img, method=detector or "hog", select="all", landmarks=True, raise_if_none=False
            )
            if len(faces) == 0:
                report.reject(photo, "no_face")
                continue
            if single_face and len(faces) > 1:
                report.reject(photo, "multiple_faces", f"{len(faces)} faces")
                continue
            big = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in faces.boxes.tolist()]))
            box = [float(v) for v in faces.boxes[big].tolist()]
            if min(box[2] - box[0], box[3] - box[1]) < min_face:
                report.reject(photo, "face_too_small", f"box {box}")
                continue
            caption = None
            side = photo.with_suffix(".txt")
            if side.is_file():
                caption = side.read_text(encoding="utf-8").strip()
            caption = caption or captions.get(photo.name)
            if not caption and captioner is not None:
                caption = captioner(img)
            caption = caption or default_caption
            if not caption:
                report.reject(photo, "no_caption")
                continue
            keypoints = None
            try:
                kp_file = _sidecar_keypoints(photo, kp_dir)
                if kp_file is not None:
                    keypoints, _ = load_keypoints(kp_file)
                elif pose_fn is not None:
                    keypoints = np.asarray(pose_fn(img), dtype=np.float32).reshape(-1, 18, 3)
            except (InputError, ValueError) as exc:
                report.reject(photo, "bad_keypoints", str(exc))
                continue
            lm68 = faces.landmarks68[big].numpy()
            key = f"{len(rows):09d}"
            if face_template == "dlib" or faces.keypoints is None:
                crop = align_face(img, face_template, face_size, landmarks=lm68)
            else:
                crop = align_face(
                    img, face_template, face_size, landmarks=faces.keypoints[big].numpy(),
                    points="keypoints",
                )  # fmt: skip
            crop_img = Image.fromarray(
                (crop[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            )
            mask = face_mask(lm68, (img.height, img.width))[0, 0].numpy()
            img.save(tmp / "images" / f"{key}.png")
            crop_img.save(tmp / "faces" / f"{key}.png")
            Image.fromarray((mask * 255).round().astype(np.uint8)).save(
                tmp / "masks" / f"{key}.png"
            )
            rows.append(
                {
                    "key": key,
                    "source": photo.name,
                    "caption": caption,
                    "image": f"images/{key}.png",
                    "face": f"faces/{key}.png",
                    "mask": f"masks/{key}.png",
                    "landmarks": np.round(lm68, 2).tolist(),
                    "face_box": [round(v, 2) for v in box],
                    "keypoints": None if keypoints is None else np.round(keypoints, 2).tolist(),
                }
            )
            report.kept += 1
        (tmp / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows))
        meta = {
            "format": FORMAT,
            "face_template": face_template,
            "face_size": face_size,
            "report": {"seen": report.seen, "kept": report.kept, **dict(report.rejected)},
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        (tmp / "rejected.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in report.rejections)
        )
    return report
