"""The portrait dataset of FPGA (IDZoom-like, spec §1): six modalities per row.

Each row holds a **caption**, the **image**, the **skeleton** (OpenPose-18 keypoints of every
person, rendered on the fly by :mod:`instantportrait.conditions`, so training and inference
draw it identically), the aligned **face crop** (224², the face embedder's template), the
**face landmarks** (68 points, image pixels) and the **face-region mask** (the landmarks'
face polygon), plus the face box. Two storages, like the pair dataset:

* **Manifest folder**: ``portraits.jsonl`` (one JSON object a line)::

      {"key": "0001", "caption": "a woman ...", "image": "images/0001.png",
       "face": "faces/0001.png", "mask": "masks/0001.png", "landmarks": [[x, y] x 68],
       "face_box": [x0, y0, x1, y1], "keypoints": [[[x, y, c] x 18], ...] or null}

  and ``dataset.json`` (``format``, ``face_template``, ``face_size``).
* **Shards**: ``shard-NNNNNN.tar`` with ``KEY.image.png``, ``KEY.face.png``,
  ``KEY.mask.png`` and ``KEY.json`` (the rest), read by index after a header scan
  (:func:`pack_portrait_shards` writes them).

:func:`build_portraits` fills a manifest folder from a folder of photos with the face stack
(detection, 68 landmarks, alignment, mask), keypoints from sidecar JSON files or a
user-provided pose function, captions from sidecar ``.txt`` files, a ``captions.jsonl`` or a
user-provided captioner. Every photo that fails a filter is counted by reason (and listed
in ``rejected.jsonl``), never silently dropped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import atomic_write, check_output, list_images, load_image, prepare_output

MANIFEST = "portraits.jsonl"
META = "dataset.json"
SHARD_PATTERN = "shard-{:06d}.tar"
FORMAT = "instantportrait-portraits-1"

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
class PortraitExample:
    """One row, images still encoded."""

    key: str
    caption: str
    image_bytes: bytes
    face_bytes: bytes
    mask_bytes: bytes
    landmarks: np.ndarray  # (68, 2)
    face_box: tuple[float, float, float, float]
    keypoints: np.ndarray | None = None  # (N, 18, 3)


def _row_example(meta: dict[str, Any], blobs: dict[str, bytes], where: str) -> PortraitExample:
    for k in ("caption", "landmarks", "face_box"):
        if k not in meta:
            raise InputError(f"{where}: missing '{k}'")
    try:
        lm = np.asarray(meta["landmarks"], dtype=np.float32)
    except (TypeError, ValueError):
        lm = np.zeros(0)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InputError(f"{where}: 'landmarks' must be 68 [x, y] points")
    box = meta["face_box"]
    ok = isinstance(box, (list, tuple)) and len(box) == 4
    ok = ok and all(isinstance(v, (int, float)) and np.isfinite(v) for v in box)
    if not ok or not (box[0] < box[2] and box[1] < box[3]):
        raise InputError(f"{where}: 'face_box' must be [x0, y0, x1, y1] with x0 < x1, y0 < y1")
    kps = meta.get("keypoints")
    if kps is not None:
        try:
            kps = np.asarray(kps, dtype=np.float32).reshape(-1, 18, 3)
        except (TypeError, ValueError):
            raise InputError(
                f"{where}: 'keypoints' must be people of 18 [x, y, confidence] points, or null"
            ) from None
    if not isinstance(meta["caption"], str):
        raise InputError(f"{where}: 'caption' must be text")
    return PortraitExample(
        key=str(meta.get("key", "")),
        caption=meta["caption"],
        image_bytes=blobs["image"],
        face_bytes=blobs["face"],
        mask_bytes=blobs["mask"],
        landmarks=lm,
        face_box=tuple(float(v) for v in box),
        keypoints=kps,
    )


class PortraitManifestSource:
    """A folder with ``portraits.jsonl``; examples read by index.

    ``strict=False`` keeps going over lines that are not JSON objects, listing them in
    ``problems`` (``data check``); by default the first one raises.
    """

    def __init__(self, root: str | os.PathLike, strict: bool = True):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise InputError(f"{self.root}: no {MANIFEST} in the dataset folder")
        self.rows = []
        #: one line per malformed manifest line (``strict=False``)
        self.problems: list[str] = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    problem = f"{path}:{n}: not a JSON object ({getattr(exc, 'msg', exc)})"
                    if strict:
                        raise InputError(problem) from None
                    self.problems.append(problem)
                    continue
                self.rows.append(row)
        if not self.rows and not self.problems:
            raise InputError(f"{path}: no rows")
        self.meta = _read_meta(self.root)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PortraitExample:
        row = self.rows[index]
        where = f"{self.root / MANIFEST} (key {row.get('key')})"
        blobs = {}
        for part in ("image", "face", "mask"):
            rel = row.get(part)
            path = (self.root / str(rel)).resolve()
            if not rel or self.root.resolve() not in path.parents or not path.is_file():
                raise InputError(f"{where}: '{part}' file {rel!r} missing or outside the folder")
            blobs[part] = path.read_bytes()
        return _row_example(row, blobs, where)


class PortraitShardSource:
    """``shard-*.tar`` files; examples read by index after one header scan."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        shards = sorted(self.root.glob("shard-*.tar"))
        if not shards:
            raise InputError(f"{self.root}: neither {MANIFEST} nor shard-*.tar files")
        self.index: list[tuple[Path, dict[str, tuple[int, int]], str]] = []
        for shard in shards:
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(shard, "r:") as tar:
                    for m in tar:
                        if m.isfile():
                            key, _, rest = m.name.partition(".")
                            groups.setdefault(key, {})[rest.split(".")[0]] = (m.offset_data, m.size)
            except tarfile.TarError as exc:
                raise InputError(f"{shard}: unreadable shard ({exc})") from None
            for key, parts in groups.items():
                missing = {"image", "face", "mask", "json"} - parts.keys()
                if missing:
                    raise InputError(f"{shard}: example {key} lacks {', '.join(sorted(missing))}")
                self.index.append((shard, parts, key))
        self.meta = _read_meta(self.root)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> PortraitExample:
        shard, parts, key = self.index[index]
        blobs = {}
        with open(shard, "rb") as fh:
            for part, (offset, size) in parts.items():
                fh.seek(offset)
                blobs[part] = fh.read(size)
        where = f"{shard} (key {key})"
        try:
            meta = json.loads(blobs["json"])
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: metadata is not JSON ({exc.msg})") from None
        return _row_example({"key": key, **meta}, blobs, where)


PortraitSource = PortraitManifestSource | PortraitShardSource


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / META
    return json.loads(path.read_text()) if path.is_file() else {}


def open_portrait_source(path: str | os.PathLike, strict: bool = True) -> PortraitSource:
    """A manifest folder or a folder of shards, whichever ``path`` holds (``strict``: see
    :class:`PortraitManifestSource`)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if (root / MANIFEST).is_file():
        return PortraitManifestSource(root, strict=strict)
    return PortraitShardSource(root)


def is_portrait_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds FPGA's portrait dataset (a ``portraits.jsonl`` manifest, or
    shards whose first example has ``image``/``face``/``mask`` parts) rather than pairs."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return True
    try:
        if (root / META).is_file() and _read_meta(root).get("format") == FORMAT:
            return True
    except (ValueError, AttributeError):  # not JSON, or not an object: judged by the shards
        pass
    shards = sorted(root.glob("shard-*.tar")) if root.is_dir() else []
    if not shards:
        return False
    try:
        with tarfile.open(shards[0], "r:") as tar:
            for member in tar:
                if member.isfile():
                    part = member.name.partition(".")[2].split(".")[0]
                    if part in ("image", "face", "mask"):
                        return True
                    if part in ("input", "target"):
                        return False
    except tarfile.TarError:
        return False
    return False


def iter_check_portraits(source: PortraitSource) -> Iterator[tuple[int, str | None]]:
    """Validate every row (image, face crop and mask through the image gate; landmarks, face
    box, keypoints, caption); yield ``(index, problem or None)``.

    Malformed manifest lines (``source.problems``) are not rows; report them apart.
    """
    for i in range(len(source)):
        try:
            ex = source[i]
            where = f"{source.root} (key {ex.key})"
            for part, data in (("image", ex.image_bytes), ("face", ex.face_bytes),
                               ("mask", ex.mask_bytes)):  # fmt: skip
                load_image(data, name=f"{where} {part}")
        except InputError as exc:
            yield i, str(exc)
        else:
            yield i, None


def pack_portrait_shards(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    shard_size: int = 1000,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write a portrait dataset as tar shards (each written atomically), plus its meta.

    Every row is checked first (:func:`iter_check_portraits`): a bad dataset raises with its
    first problem and nothing is written. The output follows the one writer policy: an
    existing folder is refused unless ``overwrite``, which removes it, so no stale shard of
    an earlier pack survives.
    """
    if shard_size < 1:
        raise InputError(f"--shard-size: must be positive, got {shard_size}")
    check_output(out_dir, overwrite=overwrite)
    src = open_portrait_source(source, strict=False)
    bad = list(getattr(src, "problems", []))
    bad += [msg for _, msg in iter_check_portraits(src) if msg is not None]
    if bad:
        more = f" (and {len(bad) - 1} more; run `data check`)" if len(bad) > 1 else ""
        raise InputError(f"{source}: {len(bad)} bad rows, nothing written; first: {bad[0]}{more}")
    out = prepare_output(out_dir, overwrite=overwrite, create=True)
    written = []
    for start in range(0, len(src), shard_size):

        def write(tmp: Path, start: int = start) -> None:
            with tarfile.open(tmp, "w") as tar:
                for i in range(start, min(start + shard_size, len(src))):
                    ex = src[i]
                    key = f"{i:09d}"
                    meta = {
                        "caption": ex.caption,
                        "landmarks": ex.landmarks.tolist(),
                        "face_box": list(ex.face_box),
                        "keypoints": None if ex.keypoints is None else ex.keypoints.tolist(),
                        "source_key": ex.key,
                    }
                    for name, data in (
                        (f"{key}.image.png", ex.image_bytes),
                        (f"{key}.face.png", ex.face_bytes),
                        (f"{key}.mask.png", ex.mask_bytes),
                        (f"{key}.json", json.dumps(meta).encode()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))

        written.append(atomic_write(out / SHARD_PATTERN.format(start // shard_size), write))
    text = json.dumps(src.meta or {"format": FORMAT}, indent=1)
    atomic_write(out / META, lambda p: p.write_text(text))
    return written


# ---------------------------------------------------------------------- building
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
    """Variance of the Laplacian of the grey image (low = blurry)."""
    g = np.asarray(image.convert("L"), dtype=np.float32)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


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
    from ..io import atomic_directory
    from ..models.resampler import align_face

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
