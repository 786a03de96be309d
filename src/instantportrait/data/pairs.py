"""The pair dataset format: (input image c_I, instruction c_T, target image x), two storages.

* **Manifest folder**: ``pairs.jsonl`` with one JSON object a line, easy to write by hand::

      {"input": "inputs/0001.png", "instruction": "wearing a hat", "target": "targets/0001.png",
       "landmarks": [[x, y], ...5 points...], "key": "0001"}

  Paths are relative to the folder. ``landmarks`` (dlib's 5-point order, input-image pixels)
  and ``key`` are optional; missing landmarks are detected when the identity loss needs them.
  ``keypoints`` (optional) are the five reference points of the detector that made the
  dataset (SCRFD's or MTCNN's own: eye centres left then right as seen in the image, nose
  tip, left and right mouth corner; input-image pixels): when a row has them, the trainers
  crop its face from them (``points="keypoints"``) instead of from ``landmarks``.
* **Shards**: WebDataset-style tar files ``shard-000000.tar`` whose members are
  ``KEY.input.EXT``, ``KEY.target.EXT`` and ``KEY.json`` (instruction, landmarks, keypoints),
  in order.
  ``instantportrait data pack`` writes them from a manifest folder. They are read by index:
  the tar headers are scanned once when a source opens (no pixel is read), then each example
  is one seek and one read, so millions of pairs stream from local or network disks and
  every rank/worker reads only its own examples.

Both give :class:`PairExample` with the encoded image bytes; decoding goes through the
input gate (:func:`instantportrait.io.load_image`) in the dataset.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import load_image
from ..writer import atomic_write, prepare_output

MANIFEST = "pairs.jsonl"
SHARD_PATTERN = "shard-{:06d}.tar"


@dataclass
class PairExample:
    """One training pair, images still encoded."""

    key: str
    instruction: str
    input_bytes: bytes
    target_bytes: bytes
    landmarks: list[list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    input_name: str = "input.png"
    target_name: str = "target.png"
    #: the detector's five reference keypoints (module docstring), or ``None``
    keypoints: list[list[float]] | None = None


#: The optional point fields of a row and the order their five points follow.
POINT_FIELDS = {"landmarks": "dlib's 5-point order", "keypoints": "the detector's keypoint order"}


def _landmark_problem(lm: Any, name: str = "landmarks") -> str | None:
    """Why ``lm`` is not 5 finite ``[x, y]`` points, or ``None`` when it is."""
    shape = f"'{name}' must be 5 [x, y] points ({POINT_FIELDS[name]})"
    if not isinstance(lm, list) or len(lm) != 5:
        return shape
    for p in lm:
        if not isinstance(p, list) or len(p) != 2:
            return shape
        for v in p:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                return f"'{name}' must hold finite numbers"
            if v in (float("inf"), float("-inf")):
                return f"'{name}' must hold finite numbers"
    return None


def _points_problem(row: dict[str, Any]) -> str | None:
    """The first problem of the row's optional point fields, or ``None``."""
    for name in POINT_FIELDS:
        if row.get(name) is not None and (p := _landmark_problem(row[name], name)):
            return p
    return None


def _field_problem(row: dict[str, Any], key: str) -> str | None:
    if key not in row:
        return f"missing '{key}'"
    if not isinstance(row[key], str):
        return f"'{key}' is not a string ({type(row[key]).__name__})"
    if not row[key].strip():
        return f"empty '{key}'"
    return None


def row_problems(row: Any) -> list[str]:
    """Every problem of one manifest row (an empty list: the row is well formed)."""
    if not isinstance(row, dict):
        return ["expected a JSON object"]
    problems = [p for k in ("input", "instruction", "target") if (p := _field_problem(row, k))]
    if p := _points_problem(row):
        problems.append(p)
    if "key" in row and not isinstance(row["key"], (str, int)):
        problems.append("'key' must be a string or an integer")
    return problems


def _check_row(row: Any, where: str) -> dict[str, Any]:
    problems = row_problems(row)
    if problems:
        raise InputError(f"{where}: {'; '.join(problems)}")
    return row


class ManifestSource:
    """A folder with ``pairs.jsonl``; examples read by index."""

    def __init__(self, root: str | os.PathLike, strict: bool = True):
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise InputError(f"{self.root}: no {MANIFEST} in the dataset folder")
        self.rows: list[dict[str, Any]] = []
        #: one line per malformed row (``strict=False``; with ``strict`` the first raises)
        self.problems: list[str] = []
        with open(manifest, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{manifest}:{n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    problem = f"{where}: not JSON ({exc.msg})"
                else:
                    found = row_problems(row)
                    problem = f"{where}: {'; '.join(found)}" if found else None
                if problem is not None:
                    if strict:
                        raise InputError(problem)
                    self.problems.append(problem)
                    continue
                row.setdefault("key", f"{len(self.rows):09d}")
                row["key"] = str(row["key"])
                row["_line"] = n
                self.rows.append(row)
        if not self.rows and not self.problems:
            raise InputError(f"{manifest}: no pairs")

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        row = self.rows[index]
        return f"{self.root / MANIFEST}:{row['_line']} (key {row['key']})"

    def _read(self, rel: str, index: int) -> bytes:
        path = (self.root / rel).resolve()
        if self.root.resolve() not in path.parents:
            raise InputError(f"{self.describe(index)}: path {rel!r} leaves the dataset folder")
        if not path.is_file():
            raise InputError(f"{self.describe(index)}: {rel}: no such file")
        return path.read_bytes()

    def __getitem__(self, index: int) -> PairExample:
        row = self.rows[index]
        extra = {
            k: v
            for k, v in row.items()
            if not k.startswith("_")
            and k not in ("input", "target", "instruction", "key", *POINT_FIELDS)
        }
        return PairExample(
            key=str(row["key"]),
            instruction=row["instruction"],
            input_bytes=self._read(row["input"], index),
            target_bytes=self._read(row["target"], index),
            landmarks=row.get("landmarks"),
            extra=extra,
            input_name=Path(row["input"]).name,
            target_name=Path(row["target"]).name,
            keypoints=row.get("keypoints"),
        )


class ShardSource:
    """WebDataset-style tar shards in a folder; examples read by index after a header scan."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.shards = sorted(self.root.glob("shard-*.tar"))
        if not self.shards:
            raise InputError(f"{self.root}: no shard-*.tar files")
        # index: (shard, {"input": (offset, size, name), "target": ..., "json": ...}, key)
        self.index: list[tuple[Path, dict[str, tuple[int, int, str]], str]] = []
        for shard in self.shards:
            groups: dict[str, dict[str, tuple[int, int, str]]] = {}
            order: list[str] = []
            try:
                with tarfile.open(shard, "r:") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        key, _, rest = member.name.partition(".")
                        part = rest.split(".")[0]
                        if key not in groups:
                            groups[key] = {}
                            order.append(key)
                        groups[key][part] = (member.offset_data, member.size, member.name)
            except tarfile.TarError as exc:
                raise InputError(f"{shard}: unreadable shard ({exc})") from None
            for key in order:
                parts = groups[key]
                missing = {"input", "target", "json"} - parts.keys()
                if missing:
                    raise InputError(f"{shard}: example {key} lacks {', '.join(sorted(missing))}")
                self.index.append((shard, parts, key))

    def __len__(self) -> int:
        return len(self.index)

    def describe(self, index: int) -> str:
        shard, _, key = self.index[index]
        return f"{shard} (key {key})"

    def __getitem__(self, index: int) -> PairExample:
        shard, parts, key = self.index[index]
        blobs = {}
        with open(shard, "rb") as fh:
            for part, (offset, size, _) in parts.items():
                fh.seek(offset)
                blobs[part] = fh.read(size)
        try:
            meta = json.loads(blobs["json"])
        except json.JSONDecodeError as exc:
            raise InputError(f"{self.describe(index)}: metadata is not JSON ({exc.msg})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{self.describe(index)}: metadata is not a JSON object")
        problem = _field_problem(meta, "instruction")
        if problem is None:
            problem = _points_problem(meta)
        if problem is not None:
            raise InputError(f"{self.describe(index)}: {problem}")
        extra = {k: v for k, v in meta.items() if k not in ("instruction", *POINT_FIELDS)}
        return PairExample(
            key=key,
            instruction=meta["instruction"],
            input_bytes=blobs["input"],
            target_bytes=blobs["target"],
            landmarks=meta.get("landmarks"),
            extra=extra,
            input_name=parts["input"][2],
            target_name=parts["target"][2],
            keypoints=meta.get("keypoints"),
        )


PairSource = ManifestSource | ShardSource


def open_pair_source(path: str | os.PathLike, strict: bool = True) -> PairSource:
    """A manifest folder (``pairs.jsonl``) or a folder of shards, whichever ``path`` holds.

    ``strict=False`` keeps going over malformed manifest rows, listing them in
    ``source.problems`` (``data check``); by default the first one raises.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if (root / MANIFEST).is_file():
        return ManifestSource(root, strict=strict)
    return ShardSource(root)


def pack_shards(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    shard_size: int = 1000,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write a dataset (manifest or shards) as tar shards of ``shard_size`` examples each.

    Every row is checked first (both images through the gate): a bad dataset raises with
    its problems and nothing is written. An existing output folder is refused unless
    ``overwrite``, which removes it (so no stale shard of an earlier pack survives). Each
    shard is written to a temporary file and renamed. Image bytes are copied unchanged.
    """
    if shard_size < 1:
        raise InputError(f"--shard-size: must be positive, got {shard_size}")
    src = open_pair_source(source, strict=False)
    bad = list(getattr(src, "problems", []))
    bad += [msg for _, msg in iter_check(src) if msg is not None]
    if bad:
        more = f" (and {len(bad) - 1} more; run `data check`)" if len(bad) > 1 else ""
        raise InputError(f"{source}: {len(bad)} bad rows, nothing written; first: {bad[0]}{more}")
    out = prepare_output(out_dir, overwrite=overwrite, kind="dir", create=True)
    written: list[Path] = []
    for start in range(0, len(src), shard_size):
        dest = out / SHARD_PATTERN.format(start // shard_size)

        def write(tmp: Path, start: int = start) -> None:
            with tarfile.open(tmp, "w") as tar:
                for i in range(start, min(start + shard_size, len(src))):
                    ex = src[i]
                    key = f"{i:09d}"
                    meta = {"instruction": ex.instruction, "source_key": ex.key, **ex.extra}
                    if ex.landmarks is not None:
                        meta["landmarks"] = ex.landmarks
                    if ex.keypoints is not None:
                        meta["keypoints"] = ex.keypoints
                    in_ext = Path(ex.input_name).suffix or ".png"
                    tg_ext = Path(ex.target_name).suffix or ".png"
                    for name, data in (
                        (f"{key}.input{in_ext}", ex.input_bytes),
                        (f"{key}.target{tg_ext}", ex.target_bytes),
                        (f"{key}.json", json.dumps(meta).encode()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))

        written.append(atomic_write(dest, write))
    return written


@dataclass
class CheckReport:
    """What ``data check`` found: counts and one line per bad row."""

    total: int
    bad: list[str]

    @property
    def ok(self) -> int:
        return self.total - len(self.bad)


def _located(source: PairSource, index: int, message: str) -> str:
    """``message`` prefixed with the row's location, unless it already starts with it."""
    where = source.describe(index)
    return message if message.startswith(where) else f"{where}: {message}"


def iter_check(source: PairSource) -> Iterator[tuple[int, str | None]]:
    """Validate every example (both images through the gate, the instruction); yield problems.

    Malformed manifest rows (``source.problems``) are not examples; report them apart.
    """
    for i in range(len(source)):
        try:
            ex = source[i]
            if not ex.instruction.strip():
                raise InputError("empty instruction")
            load_image(ex.input_bytes, name="input")
            load_image(ex.target_bytes, name="target")
        except InputError as exc:
            yield i, _located(source, i, str(exc))
        else:
            yield i, None


def check_dataset(path: str | os.PathLike) -> CheckReport:
    """Check every row of a dataset, malformed ones included, without stopping."""
    source = open_pair_source(path, strict=False)
    bad = list(getattr(source, "problems", []))
    bad += [msg for _, msg in iter_check(source) if msg is not None]
    return CheckReport(total=len(source) + len(getattr(source, "problems", [])), bad=bad)
