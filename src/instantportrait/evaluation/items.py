"""The harness's item model: what one evaluated input holds.

An evaluation expands *subjects* x prompts x seeds x methods. A :class:`Subject` is one input
of a protocol:

* one or more :class:`Identity` objects, each with its *tuning photos* (what a method may
  learn from or condition on: a single portrait for an editor, three photos for FaceA-Net's
  test-time tuning) and optional *held-out reference photos* (never given to the method;
  the reference metrics compare against them), and optionally a face *region* (``x0, y0, x1,
  y1`` in pixels of the output) where that identity should appear (FPGA's multi-ID layout);
* an optional *condition*: a pose or layout (an image or a JSON file) the method follows;
* optional item-level *references*: the images CLIP-I, DINO, LPIPS and FID compare the output
  with (FPGA: the source photo). Default: every identity's held-out photos, else the input.

Reference rule (one place, :meth:`Subject.reference_photos` / :meth:`Identity.face_references`):
a reference metric compares with the held-out photos where they are given, else with the
input photo, as the single-portrait protocols always did.

Three ways to give subjects:

* a folder of images (or a list of files): one subject per image, one identity whose only
  tuning photo is the image (the InstantPortrait and FastFace protocols);
* a folder of identity folders: ``DIR/alice/`` holding the tuning photos (directly or in
  ``tuning/``) and held-out photos in ``reference/``: one subject per identity;
* a subjects file (``.json``), for multi-identity items, conditions and explicit references::

      {"subjects": [
        {"name": "pair1",
         "identities": [
           {"name": "alice", "photos": ["alice/1.jpg"], "references": ["alice/held.jpg"],
            "region": [40, 60, 200, 240]},
           {"name": "bob", "photos": ["bob/1.jpg"]}],
         "condition": "poses/pair1.json",
         "references": ["sources/pair1.jpg"]}
      ]}

  Paths are relative to the file. A bare string ``"photo.jpg"`` in the list is a one-image
  subject.

A subject's :meth:`~Subject.fingerprint` hashes the contents of every file it names, so a
changed photo gives new result keys (results never outlive their inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "Identity",
    "Subject",
    "file_digest",
    "load_subjects",
    "subjects_from_files",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
TUNING_DIRS = ("tuning", "photos", "train")
REFERENCE_DIRS = ("reference", "references", "held_out", "heldout")


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """BLAKE2b (16 bytes, hex) of a file's contents."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Identity:
    """One person of a subject.

    Attributes:
        name: a label (unique within its subject).
        photos: tuning / input photos; ``photos[0]`` is the input of single-image methods.
        references: held-out photos the metrics compare with (never given to the method).
        region: ``(x0, y0, x1, y1)`` where this identity should appear in the output, or
            ``None`` (multi-ID rules such as FPGA's IoU > 0.5 use it).
    """

    name: str
    photos: tuple[Path, ...]
    references: tuple[Path, ...] = ()
    region: tuple[float, float, float, float] | None = None

    def face_references(self) -> tuple[Path, ...]:
        """What face similarity compares with: the held-out photos, else the input photo."""
        return self.references or self.photos[:1]


@dataclass(frozen=True)
class Subject:
    """One input of a protocol: identities, an optional condition and references.

    Attributes:
        name: the key in the store and in output paths (letters, digits, ``_ . + -``).
        identities: one or more :class:`Identity`.
        condition: a pose / layout file the method follows, or ``None``.
        references: item-level reference images (CLIP-I, DINO, LPIPS, FID); empty: see
            :meth:`reference_photos`.
    """

    name: str
    identities: tuple[Identity, ...]
    condition: Path | None = None
    references: tuple[Path, ...] = ()
    _digest: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InputError(f"subject {self.name!r}: names hold letters, digits and _ . + - only")
        if not self.identities:
            raise InputError(f"subject {self.name}: no identity")
        for ident in self.identities:
            if not ident.photos:
                raise InputError(f"subject {self.name}, identity {ident.name}: no photo")

    @property
    def input(self) -> Path:
        """The primary input photo (the first identity's first photo)."""
        return self.identities[0].photos[0]

    @property
    def multi(self) -> bool:
        """Whether the subject holds more than one identity."""
        return len(self.identities) > 1

    def reference_photos(self) -> tuple[Path, ...]:
        """What image-reference metrics compare with: the item's references, else every
        identity's held-out photos, else the input photo."""
        if self.references:
            return self.references
        held = tuple(p for ident in self.identities for p in ident.references)
        return held or (self.input,)

    def files(self) -> list[Path]:
        """Every file the subject names, in a fixed order."""
        out: list[Path] = []
        for ident in self.identities:
            out += [*ident.photos, *ident.references]
        if self.condition is not None:
            out.append(self.condition)
        out += list(self.references)
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (recorded in the store)."""
        return {
            "name": self.name,
            "identities": [
                {
                    "name": i.name,
                    "photos": [str(p) for p in i.photos],
                    "references": [str(p) for p in i.references],
                    "region": list(i.region) if i.region else None,
                }
                for i in self.identities
            ],
            "condition": str(self.condition) if self.condition else None,
            "references": [str(p) for p in self.references],
        }

    def fingerprint(self) -> str:
        """A hash of the subject's structure and every file's contents (16 hex digits)."""
        if "fp" not in self._digest:
            h = hashlib.sha1()
            desc = self.describe()
            # paths do not matter, contents and roles do
            for ident in desc["identities"]:
                ident["photos"] = [file_digest(p) for p in ident["photos"]]
                ident["references"] = [file_digest(p) for p in ident["references"]]
            desc["condition"] = file_digest(self.condition) if self.condition else None
            desc["references"] = [file_digest(p) for p in self.references]
            h.update(json.dumps(desc, sort_keys=True).encode())
            self._digest["fp"] = h.hexdigest()[:16]
        return self._digest["fp"]


def _images_in(folder: Path) -> list[Path]:
    from ..io import IMAGE_SUFFIXES

    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _identity_folder(folder: Path) -> Subject:
    photos: list[Path] = []
    refs: list[Path] = []
    for sub in TUNING_DIRS:
        if (folder / sub).is_dir():
            photos += _images_in(folder / sub)
    photos += _images_in(folder)
    for sub in REFERENCE_DIRS:
        if (folder / sub).is_dir():
            refs += _images_in(folder / sub)
    if not photos:
        raise InputError(f"{folder}: identity folder holds no photos (directly or in tuning/)")
    name = folder.name
    return Subject(name, (Identity(name, tuple(photos), tuple(refs)),))


def subjects_from_files(paths: Sequence[str | os.PathLike]) -> list[Subject]:
    """One-image subjects from files and folders of images, or identity folders (see the
    module docstring); a ``.json`` path is read as a subjects file."""
    from ..io import IMAGE_SUFFIXES

    subjects: list[Subject] = []
    for item in paths:
        p = Path(item)
        if p.is_file() and p.suffix.lower() == ".json":
            subjects += load_subjects(p)
        elif p.is_dir():
            images = _images_in(p)
            folders = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            if images:
                subjects += [Subject(f.stem, (Identity(f.stem, (f,)),)) for f in images]
            elif folders:
                subjects += [_identity_folder(d) for d in folders]
            else:
                raise InputError(f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif p.is_file():
            subjects.append(Subject(p.stem, (Identity(p.stem, (p,)),)))
        else:
            raise InputError(f"{p}: no such file")
    _check_unique(subjects)
    return subjects


def _check_unique(subjects: Sequence[Subject]) -> None:
    seen: set[str] = set()
    for s in subjects:
        if s.name in seen:
            raise InputError(f"--faces: two inputs are named {s.name!r}; outputs would collide")
        seen.add(s.name)


def _path(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a file path")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise InputError(f"{where}: {p}: no such file")
    return p


def _paths(base: Path, value: Any, where: str) -> tuple[Path, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a list of file paths")
    return tuple(_path(base, v, f"{where}[{i}]") for i, v in enumerate(value))


def load_subjects(path: str | os.PathLike) -> list[Subject]:
    """Subjects from a subjects file (see the module docstring)."""
    p = Path(path)
    label = str(p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: invalid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("subjects")
    if not isinstance(data, list) or not data:
        raise InputError(f"{label}: expected {{'subjects': [...]}} with at least one subject")
    base = p.parent
    subjects: list[Subject] = []
    for i, entry in enumerate(data):
        where = f"{label}: subjects[{i}]"
        if isinstance(entry, str):
            f = _path(base, entry, where)
            subjects.append(Subject(f.stem, (Identity(f.stem, (f,)),)))
            continue
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object or a file path")
        unknown = sorted(set(entry) - {"name", "identities", "condition", "references"})
        if unknown:
            raise InputError(f"{where}: unknown field {unknown[0]!r}")
        idents_raw = entry.get("identities")
        if not isinstance(idents_raw, list) or not idents_raw:
            raise InputError(f"{where}: 'identities' must be a non-empty list")
        identities = []
        for k, ident in enumerate(idents_raw):
            w = f"{where}.identities[{k}]"
            if not isinstance(ident, dict):
                raise InputError(f"{w}: expected an object")
            bad = sorted(set(ident) - {"name", "photos", "references", "region"})
            if bad:
                raise InputError(f"{w}: unknown field {bad[0]!r}")
            photos = _paths(base, ident.get("photos"), f"{w}.photos")
            if not photos:
                raise InputError(f"{w}: 'photos' needs at least one photo")
            region = ident.get("region")
            if region is not None:
                if (
                    not isinstance(region, list)
                    or len(region) != 4
                    or not all(isinstance(v, (int, float)) for v in region)
                    or region[2] <= region[0]
                    or region[3] <= region[1]
                ):
                    raise InputError(f"{w}.region: expected [x0, y0, x1, y1] with x1>x0, y1>y0")
                region = tuple(float(v) for v in region)
            identities.append(
                Identity(
                    str(ident.get("name") or photos[0].stem),
                    photos,
                    _paths(base, ident.get("references"), f"{w}.references"),
                    region,
                )
            )
        names = [i.name for i in identities]
        if len(set(names)) != len(names):
            raise InputError(f"{where}: two identities share a name")
        name = str(entry.get("name") or identities[0].name)
        cond = entry.get("condition")
        subjects.append(
            Subject(
                name,
                tuple(identities),
                _path(base, cond, f"{where}.condition") if cond is not None else None,
                _paths(base, entry.get("references"), f"{where}.references"),
            )
        )
    _check_unique(subjects)
    return subjects
