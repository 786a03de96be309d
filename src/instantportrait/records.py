"""Output records: what made each file a generating command writes, and the one seed rule.

Every generating command (``edit``, ``edit-video``, ``generate --method ...``, ``restore``)
writes ``records.json`` into the folder that holds its outputs. It maps each output's file
name to a self-contained record::

    {
      "format": "instantportrait.records/1",
      "outputs": {
        "0000.png": {
          "command": "generate", "method": "fpga",
          "prompt": "a portrait in a garden", "seed": 0, "width": 512, "height": 512,
          "settings": {"steps": 30, "guidance_scale": 5.0, ...},
          "models": {"model": "runs/fpga/final"}
        }
      }
    }

Decisions, written down:

* One record per output file, each complete on its own (no shared header): a folder that
  gathers outputs of several runs (``edit``'s does) stays true, and one entry can be copied
  out with its image.
* ``width``/``height`` are the saved image's own size; ``settings`` holds the method's
  options by value as given (a custom preset by its values, not only its name; ``null``: the
  default), ``resolved`` what a default became once the model loaded (``edit``'s steps,
  FastFace's family); ``models`` the model sources (folder or Hub id; a default by the id it
  stands for).
* The seed rule (:func:`image_seed`): image ``k`` of prompt ``p`` with ``n`` images per
  prompt gets ``seed + p * n + k``, for every method; ``edit`` applies it per input (each
  input gets the same seeds), ``restore`` has no seed (``null``).
* The file is rewritten atomically after each output is saved, so an interrupted run leaves
  records of exactly the outputs it finished. A resumed run (``--skip-existing``) keeps an
  output only when its record says it was made as asked (:meth:`OutputRecords.is_done`): an
  output with no record is made again, one made otherwise is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .writer import atomic_write

__all__ = [
    "FORMAT",
    "RECORDS_FILE",
    "OutputRecords",
    "PlannedImage",
    "image_seed",
    "plan_images",
    "read_records",
    "record_value",
]

RECORDS_FILE = "records.json"
FORMAT = "instantportrait.records/1"
#: the keys that say how an output was asked for (compared by ``--skip-existing``)
_REQUEST_KEYS = ("command", "method", "prompt", "seed", "settings", "models")


def image_seed(seed: int, prompt_index: int, image_index: int, per_prompt: int) -> int:
    """The seed of image ``image_index`` of prompt ``prompt_index``: ``seed + p * n + k``."""
    if not 0 <= image_index < per_prompt:
        raise ValueError(f"image_index {image_index} outside [0, {per_prompt})")
    return seed + prompt_index * per_prompt + image_index


@dataclass(frozen=True)
class PlannedImage:
    """One image of a run: its position (``index`` over all prompts), prompt and seed."""

    index: int
    prompt_index: int
    image_index: int
    prompt: str
    seed: int


def plan_images(prompts: list[str], per_prompt: int, seed: int) -> list[PlannedImage]:
    """Every image of ``prompts`` x ``per_prompt``, in order, with its seed (:func:`image_seed`)."""
    return [
        PlannedImage(i * per_prompt + k, i, k, p, image_seed(seed, i, k, per_prompt))
        for i, p in enumerate(prompts)
        for k in range(per_prompt)
    ]


def record_value(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses by their fields, paths and dtypes as text,
    tuples as lists, mappings with text keys."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: record_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): record_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [record_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value).removeprefix("torch.")


class OutputRecords:
    """The ``records.json`` of one output folder: read when present, rewritten on each add.

    Args:
        folder: the folder that holds the outputs (and the records).
        command: the command's name (``generate``, ``edit`` ...), in every record.
        method: the method (``fastface`` ...; ``None`` for a command with one).
        settings: the options that shaped every output of this run, by value.
        models: model sources of this run (name -> folder or Hub id).
        fresh: start with no records, without reading the folder's (an output about to be
            replaced).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        command: str,
        method: str | None = None,
        settings: Mapping[str, Any] | None = None,
        models: Mapping[str, Any] | None = None,
        fresh: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RECORDS_FILE
        self.base = {
            "command": command,
            "method": method,
            "settings": record_value(dict(settings or {})),
            "models": record_value({k: v for k, v in (models or {}).items() if v is not None}),
        }
        self.outputs: dict[str, dict[str, Any]] = {} if fresh else self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            outputs = data["outputs"]
            if data.get("format") != FORMAT or not isinstance(outputs, dict):
                raise ValueError(f"not {FORMAT}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{self.path}: not a records file this version reads ({exc}); move it away or "
                "choose another output"
            ) from None
        return outputs

    def expected(self, *, prompt: str | None, seed: int | None, **extra: Any) -> dict[str, Any]:
        """The record an output made now with ``prompt`` and ``seed`` would have (no size)."""
        record = {
            "command": self.base["command"],
            "method": self.base["method"],
            "prompt": prompt,
            "seed": seed,
            "settings": self.base["settings"],
            "models": self.base["models"],
        }
        record.update(record_value(extra))
        return record

    def is_done(self, name: str, *, prompt: str | None, seed: int | None, **request: Any) -> bool:
        """Whether ``name`` exists and was made as asked now (for ``--skip-existing``).

        ``request``: further fields that say what was asked (``edit``'s input file).
        ``False`` when the file is missing or has no record (an interrupted write: make it
        again); :class:`InputError` when its record says it was made otherwise.
        """
        if not (self.folder / name).exists() or name not in self.outputs:
            return False
        old = self.outputs[name]
        new = self.expected(prompt=prompt, seed=seed, **request)
        differ = [k for k in (*_REQUEST_KEYS, *request) if old.get(k) != new[k]]
        if differ:
            raise InputError(
                f"--skip-existing: {self.folder / name} was made with another "
                f"{', '.join(differ)} (see {self.path}); pass --overwrite or choose another "
                "output"
            )
        return True

    def add(
        self,
        name: str,
        *,
        prompt: str | None,
        seed: int | None,
        size: tuple[int, int] | None = None,
        write: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """Record output ``name`` (saved already) and rewrite the file atomically.

        ``size``: the saved image's (width, height); ``write=False`` defers the rewrite to
        :meth:`write` (many outputs finished at once); ``extra``: fields of this output alone
        (FaceA-Net's split prompts, timings ...).
        """
        record = self.expected(prompt=prompt, seed=seed)
        if size is not None:
            record["width"], record["height"] = int(size[0]), int(size[1])
        record.update(record_value(extra))
        self.outputs[name] = record
        if write:
            self.write()
        return record

    def write(self) -> Path:
        """Rewrite ``records.json`` atomically with every record held."""
        data = {"format": FORMAT, "outputs": self.outputs}
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        return atomic_write(self.path, lambda p: p.write_text(text, encoding="utf-8"))

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)


def read_records(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The records of an output folder: file name -> record (empty when it has none)."""
    return OutputRecords(folder, command="").outputs
