"""The portrait dataset format of FPGA (IDZoom-like, spec §1): six modalities per row.

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

This module reads, checks and packs the dataset; :mod:`.portrait_builder` builds a manifest
folder from a folder of photos.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import load_image
from ..writer import atomic_write, check_output, prepare_output

MANIFEST = "portraits.jsonl"
META = "dataset.json"
SHARD_PATTERN = "shard-{:06d}.tar"
FORMAT = "instantportrait-portraits-1"


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
