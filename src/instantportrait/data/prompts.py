"""Prompts of the pair dataset (InstantPortrait, App. B.1): identity x instruction -> target.

An **identity prompt** describes a person from a grid of attributes (age, gender, ethnicity /
nationality, skin tone, hair, glasses), each drawn from a weighted list. An **instruction**
is an edit phrase from one of the instruction categories (style, makeup, hairstyle, clothing,
accessories, background, art style): a category is drawn by its weight, then an entry of its
list. The **target prompt** is ``identity + ", " + instruction``: the target image shows the
person already edited, the input image shows the same person from the identity prompt alone.

Lists are plain text files, one entry a line, ``#`` comments, an optional ``| weight`` at the
end of a line (default 1). The curated lists ship in ``instantportrait/data/prompt_lists/``;
a user adds entries to a list (``extend``) or replaces it (``replace``) with files of the same
format, e.g. a language model's output saved one prompt a line. ``-`` is the absence of the
attribute (glasses: none).

Rows are drawn in blocks of :data:`BLOCK` from a generator seeded by ``(seed, block)``, so
row ``i`` is the same whatever rows are asked for around it, the stream needs no memory
beyond one block, and a job can start at any row.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..writer import atomic_write

#: Rows drawn per generator: the unit of the stream's memory and of its random access.
BLOCK = 4096

#: The identity attributes, in the order the identity prompt names them.
IDENTITY_ATTRIBUTES = ("age", "ethnicity", "gender", "skin_tone", "hair", "glasses")

#: The list naming the instruction categories and their weights.
CATEGORIES_LIST = "categories"

NONE_ENTRY = "-"


@dataclass(frozen=True)
class WeightedList:
    """Entries and their probabilities (weights normalised to sum 1)."""

    name: str
    entries: tuple[str, ...]
    probabilities: np.ndarray = field(compare=False)

    @classmethod
    def from_pairs(cls, name: str, pairs: Sequence[tuple[str, float]]) -> WeightedList:
        if not pairs:
            raise InputError(f"prompt list {name!r}: no entries")
        weights = np.array([w for _, w in pairs], dtype=np.float64)
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise InputError(f"prompt list {name!r}: weights must be non-negative, not all 0")
        return cls(name, tuple(e for e, _ in pairs), weights / weights.sum())

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` entry indices drawn with the list's probabilities."""
        return rng.choice(len(self.entries), size=size, p=self.probabilities)


def parse_list(text: str, where: str) -> list[tuple[str, float]]:
    """``(entry, weight)`` pairs of a list file's text; bad weights name the line."""
    pairs = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry, sep, weight = line.rpartition("|") if "|" in line else (line, "", "")
        entry = entry.strip() if sep else line
        w = 1.0
        if sep:
            try:
                w = float(weight)
            except ValueError:
                raise InputError(
                    f"{where}:{n}: weight {weight.strip()!r} is not a number"
                ) from None
            if not np.isfinite(w) or w < 0:
                raise InputError(f"{where}:{n}: weight must be a non-negative number")
        if not entry:
            raise InputError(f"{where}:{n}: empty entry")
        pairs.append((entry, w))
    return pairs


def read_list_file(path: str | os.PathLike) -> list[tuple[str, float]]:
    """Read a user's list file (UTF-8, one entry a line, optional ``| weight``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: prompt list file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: prompt list is not UTF-8 text") from None
    pairs = parse_list(text, str(p))
    if not pairs:
        raise InputError(f"{p}: prompt list has no entries")
    return pairs


def shipped_lists() -> dict[str, list[tuple[str, float]]]:
    """The curated lists shipped with the package: name -> ``(entry, weight)`` pairs."""
    folder = importlib.resources.files("instantportrait.data.prompt_lists")
    lists = {}
    for item in folder.iterdir():
        if item.name.endswith(".txt"):
            name = item.name[: -len(".txt")]
            lists[name] = parse_list(item.read_text(encoding="utf-8"), f"prompt_lists/{item.name}")
    return lists


@dataclass(frozen=True)
class PromptConfig:
    """The attribute grid and the instruction categories, each a :class:`WeightedList`."""

    identity: Mapping[str, WeightedList]
    categories: WeightedList
    instructions: Mapping[str, WeightedList]

    @classmethod
    def build(
        cls,
        extend: Mapping[str, Sequence[str | os.PathLike]] | None = None,
        replace: Mapping[str, str | os.PathLike] | None = None,
    ) -> PromptConfig:
        """The shipped lists, with user files added to (``extend``) or replacing lists.

        A name that is not a shipped list is a new instruction category when it is also
        named in the ``categories`` list (extend or replace ``categories`` to add it).
        """
        lists = shipped_lists()
        for name, path in (replace or {}).items():
            lists[name] = read_list_file(path)
        for name, paths in (extend or {}).items():
            for path in paths:
                lists[name] = lists.get(name, []) + read_list_file(path)
        known = set(IDENTITY_ATTRIBUTES) | {CATEGORIES_LIST}
        categories = WeightedList.from_pairs(CATEGORIES_LIST, lists[CATEGORIES_LIST])
        for cat in categories.entries:
            if cat in known:
                raise InputError(f"prompt list categories: {cat!r} is an identity attribute")
            if cat not in lists:
                raise InputError(f"prompt list categories: no list named {cat!r} (add --list)")
        given = set(extend or {}) | set(replace or {})
        unused = given - known - set(categories.entries)
        if unused:
            raise InputError(
                f"prompt lists {', '.join(sorted(unused))}: not an identity attribute nor a "
                "category (name it in the categories list)"
            )
        return cls(
            identity={a: WeightedList.from_pairs(a, lists[a]) for a in IDENTITY_ATTRIBUTES},
            categories=categories,
            instructions={c: WeightedList.from_pairs(c, lists[c]) for c in categories.entries},
        )


def identity_prompt(attributes: Mapping[str, str]) -> str:
    """The identity prompt of an attribute set (``-`` entries are left out)."""
    a = {k: v for k, v in attributes.items() if v != NONE_ENTRY}
    words = " ".join(a[k] for k in ("age", "ethnicity", "gender") if k in a)
    article = "an" if words[:1].lower() in "aeiou" else "a"
    text = f"a photo of {article} {words}"
    extras = [a[k] for k in ("skin_tone",) if k in a]
    if "hair" in a:
        extras.append(f"with {a['hair']}" if not a["hair"].startswith("a ") else a["hair"])
    if "glasses" in a:
        extras.append(f"wearing {a['glasses']}")
    return ", ".join([text, *extras])


def target_prompt(identity: str, instruction: str) -> str:
    """Target prompt = identity prompt + instruction (App. B.1)."""
    return f"{identity}, {instruction}"


class PromptGenerator:
    """The deterministic, streaming prompt source: ``rows(num, start)`` yields dict rows.

    Each row: ``index``, ``identity``, ``instruction``, ``target`` (the three prompts),
    ``category`` and ``attributes`` (the identity attributes), so a dataset can be sliced and
    balanced later.
    """

    def __init__(self, config: PromptConfig | None = None, seed: int = 0):
        self.config = config or PromptConfig.build()
        self.seed = int(seed)

    def _block(self, block: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, block])
        cfg = self.config
        draws = {a: cfg.identity[a].draw(rng, BLOCK) for a in IDENTITY_ATTRIBUTES}
        cats = cfg.categories.draw(rng, BLOCK)
        # one draw per category for the whole block keeps the stream independent of the mix
        per_cat = {c: cfg.instructions[c].draw(rng, BLOCK) for c in cfg.categories.entries}
        rows = []
        for j in range(BLOCK):
            attrs = {a: cfg.identity[a].entries[draws[a][j]] for a in IDENTITY_ATTRIBUTES}
            cat = cfg.categories.entries[cats[j]]
            instruction = cfg.instructions[cat].entries[per_cat[cat][j]]
            identity = identity_prompt(attrs)
            rows.append(
                {
                    "index": block * BLOCK + j,
                    "identity": identity,
                    "instruction": instruction,
                    "target": target_prompt(identity, instruction),
                    "category": cat,
                    "attributes": attrs,
                }
            )
        return rows

    def rows(self, num: int, start: int = 0) -> Iterator[dict[str, Any]]:
        """Rows ``start .. start + num - 1``, one block in memory at a time."""
        if num < 0 or start < 0:
            raise InputError("prompts: --num and the start row must be non-negative")
        end = start + num
        i = start
        while i < end:
            block = i // BLOCK
            for row in self._block(block)[i - block * BLOCK : min(end - block * BLOCK, BLOCK)]:
                yield row
                i += 1


def write_prompts(
    path: str | os.PathLike,
    num: int,
    seed: int = 0,
    config: PromptConfig | None = None,
    progress: bool = False,
) -> int:
    """Stream ``num`` rows into a JSONL file (written atomically); returns the count."""
    gen = PromptGenerator(config, seed)

    def write(tmp: Path) -> None:
        from tqdm.auto import tqdm

        with open(tmp, "w", encoding="utf-8") as fh:
            for row in tqdm(
                gen.rows(num), total=num, unit="row", disable=not progress, desc="prompts"
            ):
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    atomic_write(path, write)
    return num


def _check_prompt_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object")
    for key in ("identity", "instruction", "target"):
        value = row.get(key)
        if key not in row:
            raise InputError(f"{where}: missing {key!r}")
        if not isinstance(value, str):
            raise InputError(f"{where}: {key!r} is not a string")
        if not value.strip():
            raise InputError(f"{where}: {key!r} is empty")
    return row


def read_prompts(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Stream the rows of a prompts JSONL file; a bad row raises naming its line.

    Rows without ``index`` are numbered by their position (0-based, blank lines skipped).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: prompts file not found")
    position = 0
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{p}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not JSON ({exc.msg})") from None
            row = _check_prompt_row(row, where)
            row.setdefault("index", position)
            position += 1
            yield row


def count_prompts(path: str | os.PathLike) -> int:
    """Number of non-blank lines of a prompts file (read in chunks, rows not parsed)."""
    count = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            count += bool(line.strip())
    return count
