"""Evaluation protocols: which prompts, metrics and seeds a benchmark uses, read from files.

Shipped (``instantportrait/protocols/``): ``instantportrait`` and ``fastface``. A protocol is
a JSON file; write your own and pass its path to ``--protocol``::

    {
      "name": "mine",
      "description": "what it measures",
      "prompts_file": "mine_prompts.txt",      // or "prompts": ["...", ...]
      "metrics": ["face_sim_dlib", "clip_t_vitl14", "ffc"],
      "seeds": 2,
      "text_template": "a photo of a person, {prompt}", // what CLIP-T compares with
      "face_match": "best"         // optional: the face matcher of multi-identity items
    }

Prompt files (``.txt``): one prompt a line; blank lines and lines starting with ``#`` are
skipped; a line ``[name]`` starts a *split* (reported separately, e.g. FastFace's
``realistic`` / ``stylistic``). A ``.json`` prompt file is a list of strings or of
``{"text": ..., "split": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import check_prompt

__all__ = [
    "Prompt",
    "Protocol",
    "list_protocols",
    "load_protocol",
    "prompt_hash",
    "read_prompts",
]

DEFAULT_SPLIT = "all"


def prompt_hash(text: str) -> str:
    """A short stable id of a prompt (8 hex digits of SHA-1), used in output file names."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class Prompt:
    """A prompt of a protocol: its ``text``, ``split`` and position ``index``."""

    text: str
    split: str = DEFAULT_SPLIT
    index: int = 0

    @property
    def hash(self) -> str:
        """:func:`prompt_hash` of the text."""
        return prompt_hash(self.text)


@dataclass
class Protocol:
    """A benchmark: prompts (with splits), default metrics and seeds, CLIP-T text template."""

    name: str
    prompts: list[Prompt]
    metrics: list[str] = field(default_factory=lambda: ["face_sim_dlib", "ffc"])
    seeds: int = 1
    text_template: str = "{prompt}"
    description: str = ""
    faces: str = ""
    prompts_note: str = ""
    source: str | None = None
    face_match: str | None = None

    @property
    def splits(self) -> list[str]:
        """The splits, in order of first appearance."""
        return list(dict.fromkeys(p.split for p in self.prompts))


def _packaged_dir():
    return resources.files("instantportrait") / "protocols"


def list_protocols() -> list[str]:
    """The names of the shipped protocols (``*_reference.json`` hold papers' published rows,
    not protocols)."""
    return sorted(
        Path(p.name).stem
        for p in _packaged_dir().iterdir()
        if p.name.endswith(".json") and not p.name.endswith("_reference.json")
    )


def _parse_prompt_lines(lines: list[str], label: str) -> list[Prompt]:
    split = DEFAULT_SPLIT
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[([A-Za-z0-9_.-]+)\]", line)
        if m:
            split = m.group(1)
            continue
        text = check_prompt(line, name=f"{label}:{lineno}")
        if text in seen:
            raise InputError(f"{label}:{lineno}: duplicate prompt {text!r}")
        seen.add(text)
        prompts.append(Prompt(text, split, len(prompts)))
    if not prompts:
        raise InputError(f"{label}: no prompts")
    return prompts


def _prompts_from_list(items: list[Any], label: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, str):
            text, split = item, DEFAULT_SPLIT
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            text, split = item["text"], str(item.get("split") or DEFAULT_SPLIT)
        else:
            raise InputError(f"{label}[{i}]: expected a string or {{'text': ..., 'split': ...}}")
        text = check_prompt(text, name=f"{label}[{i}]")
        if text in seen:
            raise InputError(f"{label}[{i}]: duplicate prompt {text!r}")
        seen.add(text)
        prompts.append(Prompt(text, split, len(prompts)))
    if not prompts:
        raise InputError(f"{label}: no prompts")
    return prompts


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompts from a ``.txt`` (lines, ``[split]`` headers) or ``.json`` (list) file, or from
    ``SPLIT=FILE,SPLIT=FILE`` (one plain file per split, e.g. FastFace's release:
    ``realistic=prompts_nostyle.txt,stylistic=prompts_style.txt``)."""
    p = Path(path)
    if not p.is_file() and "=" in str(path):
        return _read_split_files(str(path))
    if not p.is_file():
        raise InputError(f"{p}: prompt file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: prompt file is not UTF-8 text") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict):
            data = data.get("prompts")
        if not isinstance(data, list):
            raise InputError(f"{p}: expected a list of prompts")
        return _prompts_from_list(data, str(p))
    return _parse_prompt_lines(text.splitlines(), str(p))


def _read_split_files(arg: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    for part in (x.strip() for x in arg.split(",") if x.strip()):
        split, eq, file = part.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_.-]+", split.strip()):
            raise InputError(f"--prompts {arg!r}: expected FILE or SPLIT=FILE,SPLIT=FILE")
        f = Path(file.strip())
        if not f.is_file():
            raise InputError(f"{f}: prompt file not found")
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise InputError(f"{f}: prompt file is not UTF-8 text") from None
        header = [f"[{split.strip()}]"]
        prompts += _parse_prompt_lines(header + [ln for ln in lines if ln.strip() != ""], str(f))
    texts = [p.text for p in prompts]
    dup = next((t for t in texts if texts.count(t) > 1), None)
    if dup is not None:
        raise InputError(f"--prompts {arg!r}: prompt {dup!r} is in two files")
    return [Prompt(p.text, p.split, i) for i, p in enumerate(prompts)]


def _read_text_resource(folder: Any, name: str) -> str:
    return (folder / name).read_text(encoding="utf-8")


def load_protocol(name_or_path: str | os.PathLike) -> Protocol:
    """A shipped protocol by name (``instantportrait``, ``fastface``) or a protocol file."""
    from .metrics import METRICS

    arg = str(name_or_path)
    packaged = _packaged_dir()
    if Path(arg).suffix.lower() == ".json" or os.sep in arg or "/" in arg:
        path = Path(arg)
        if not path.is_file():
            raise InputError(f"--protocol {arg}: no such file")
        folder: Any = path.parent
        raw, label = path.read_text(encoding="utf-8"), str(path)
    elif (packaged / f"{arg}.json").is_file():
        folder = packaged
        raw, label = (packaged / f"{arg}.json").read_text(encoding="utf-8"), arg
    else:
        raise InputError(
            f"--protocol {arg}: unknown; one of {', '.join(list_protocols())} or a .json file"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{label}: a protocol is a JSON object")
    known = {
        "name",
        "description",
        "faces",
        "prompts",
        "prompts_file",
        "prompts_note",
        "metrics",
        "seeds",
        "text_template",
        "face_match",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(
            f"{label}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    if "prompts" in data:
        if not isinstance(data["prompts"], list):
            raise InputError(f"{label}: 'prompts' must be a list")
        prompts = _prompts_from_list(data["prompts"], f"{label}:prompts")
    elif "prompts_file" in data:
        pf = str(data["prompts_file"])
        try:
            lines = _read_text_resource(folder, pf).splitlines()
        except (FileNotFoundError, OSError):
            raise InputError(f"{label}: prompts_file {pf!r} not found beside it") from None
        if pf.endswith(".json"):
            prompts = read_prompts(Path(str(folder)) / pf)
        else:
            prompts = _parse_prompt_lines(lines, pf)
    else:
        raise InputError(f"{label}: give 'prompts' or 'prompts_file'")
    metrics = data.get("metrics", ["face_sim_dlib", "ffc"])
    if not isinstance(metrics, list) or not all(m in METRICS for m in metrics):
        bad = [m for m in (metrics if isinstance(metrics, list) else [metrics]) if m not in METRICS]
        raise InputError(f"{label}: unknown metric {bad[0]!r} in 'metrics'")
    seeds = data.get("seeds", 1)
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"{label}: 'seeds' must be a positive integer")
    template = str(data.get("text_template", "{prompt}"))
    try:
        template.format(prompt="x")
    except (KeyError, IndexError, ValueError):
        raise InputError(f"{label}: text_template may use only {{prompt}}") from None
    face_match = data.get("face_match")
    if face_match is not None:
        from .metrics import FACE_MATCHERS

        if face_match not in FACE_MATCHERS:
            raise InputError(
                f"{label}: face_match one of {', '.join(sorted(FACE_MATCHERS))}; got {face_match!r}"
            )
    return Protocol(
        name=str(data.get("name", Path(arg).stem)),
        face_match=face_match,
        prompts=prompts,
        metrics=list(metrics),
        seeds=seeds,
        text_template=template,
        description=str(data.get("description", "")),
        faces=str(data.get("faces", "")),
        prompts_note=str(data.get("prompts_note", "")),
        source=label,
    )
