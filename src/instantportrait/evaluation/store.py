"""The results store: one SQLite file (``results.sqlite``) in the output folder.

Tables:

* ``results``: one row per (method, face, prompt, seed, metric), the primary key, so a row
  can never be duplicated; ``value`` (``NULL`` unless ``status = 'ok'``), ``status`` (``ok``,
  ``failed``: the metric raised, ``error`` says why; ``n/a``: the metric does not apply to the
  item), ``n`` (items a group/set value is computed over), ``seconds``, ``created``. Rows of
  ``group`` / ``set`` / ``method`` metrics use ``*`` for what they aggregate over
  (``prompt='*:SPLIT'``, ``face='*'``, ``seed=-1``).
* ``outputs``: one row per generated output: its PNG (relative to the folder), status, error,
  seconds.
* ``methods``: name, SPEC, settings and cost of each method (a name keeps its SPEC).
* ``prompts``: prompt text, index, split.
* ``metric_status``: which requested metrics were unavailable, and why.
* ``meta``: key/value (protocol, environment).

Every item's rows are written in one transaction, so a run killed at any point keeps
everything committed before and no partial item; a restart computes only what is missing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["STORE_NAME", "ResultRow", "ResultStore"]

STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    method TEXT NOT NULL, face TEXT NOT NULL, prompt TEXT NOT NULL, seed INTEGER NOT NULL,
    metric TEXT NOT NULL, value REAL, status TEXT NOT NULL, error TEXT, n INTEGER,
    seconds REAL, created TEXT NOT NULL,
    PRIMARY KEY (method, face, prompt, seed, metric)
);
CREATE TABLE IF NOT EXISTS outputs (
    method TEXT NOT NULL, face TEXT NOT NULL, prompt TEXT NOT NULL, seed INTEGER NOT NULL,
    path TEXT, status TEXT NOT NULL, error TEXT, seconds REAL, created TEXT NOT NULL,
    PRIMARY KEY (method, face, prompt, seed)
);
CREATE TABLE IF NOT EXISTS methods (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, settings TEXT, cost TEXT
);
CREATE TABLE IF NOT EXISTS prompts (
    prompt TEXT PRIMARY KEY, idx INTEGER, split TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metric_status (
    metric TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class ResultRow:
    """One result: the key (method, face, prompt, seed, metric) and what was measured."""

    method: str
    face: str
    prompt: str
    seed: int
    metric: str
    value: float | None
    status: str = "ok"
    error: str | None = None
    n: int | None = None
    seconds: float | None = None


class ResultStore:
    """The SQLite store of one evaluation folder (see the module docstring).

    Args:
        folder: the output folder; the store is ``folder/results.sqlite``.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / STORE_NAME
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            self.conn.commit()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a results store ({exc})") from None

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def add_rows(self, rows: Iterable[ResultRow], replace: bool = True) -> None:
        """Write rows in one transaction (a key already present is replaced, never doubled)."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        now = _now()
        with self.conn:
            self.conn.executemany(
                f"{verb} INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.method,
                        r.face,
                        r.prompt,
                        int(r.seed),
                        r.metric,
                        None if r.value is None else float(r.value),
                        r.status,
                        r.error,
                        r.n,
                        r.seconds,
                        now,
                    )
                    for r in rows
                ],
            )

    def set_output(
        self,
        method: str,
        face: str,
        prompt: str,
        seed: int,
        path: str | None,
        status: str = "ok",
        error: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """Record a generated output (or its failure)."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO outputs VALUES (?,?,?,?,?,?,?,?,?)",
                (method, face, prompt, int(seed), path, status, error, seconds, _now()),
            )

    def register_method(
        self, name: str, spec: str, settings: dict[str, Any], force: bool = False
    ) -> None:
        """Record a method; a name already stored with another SPEC is refused (``force``
        replaces the record, keeping the rows)."""
        row = self.conn.execute("SELECT spec FROM methods WHERE name=?", (name,)).fetchone()
        if row is not None and row[0] != spec and not force:
            raise InputError(
                f"--method {name}: this store has {name} as {row[0]!r}, not {spec!r}; "
                "give the new SPEC another name or use another --out folder"
            )
        with self.conn:
            self.conn.execute(
                "INSERT INTO methods(name, spec, settings) VALUES (?,?,?) ON CONFLICT(name) "
                "DO UPDATE SET spec=excluded.spec, settings=excluded.settings",
                (name, spec, json.dumps(settings, sort_keys=True, default=str)),
            )

    def set_method_cost(self, name: str, cost: dict[str, Any]) -> None:
        """Record a method's cost (parameters, steps)."""
        with self.conn:
            self.conn.execute(
                "UPDATE methods SET cost=? WHERE name=?", (json.dumps(cost, default=str), name)
            )

    def set_prompts(self, prompts: Sequence[tuple[str, int, str]]) -> None:
        """Record ``(prompt, index, split)`` for every prompt of the run."""
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO prompts VALUES (?,?,?)", prompts)

    def set_metric_status(self, metric: str, status: str, reason: str | None = None) -> None:
        """Record whether a requested metric is ``available`` or ``unavailable`` (and why)."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO metric_status VALUES (?,?,?)", (metric, status, reason)
            )

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key``."""
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES (?,?)", (key, json.dumps(value, default=str))
            )

    def delete_failed(self) -> int:
        """Drop failed results and outputs (``--retry-failed``); returns how many rows."""
        with self.conn:
            n = self.conn.execute("DELETE FROM results WHERE status='failed'").rowcount
            n += self.conn.execute("DELETE FROM outputs WHERE status='failed'").rowcount
        return n

    # ------------------------------------------------------------------ reading
    def done_metrics(self, method: str, face: str, prompt: str, seed: int) -> set[str]:
        """The metrics with a row for this item (any status)."""
        rows = self.conn.execute(
            "SELECT metric FROM results WHERE method=? AND face=? AND prompt=? AND seed=?",
            (method, face, prompt, int(seed)),
        )
        return {r[0] for r in rows}

    def done_keys(self, method: str) -> dict[tuple[str, str, int], set[str]]:
        """``(face, prompt, seed) -> metrics`` already stored for ``method``."""
        out: dict[tuple[str, str, int], set[str]] = {}
        rows = self.conn.execute(
            "SELECT face, prompt, seed, metric FROM results WHERE method=?", (method,)
        )
        for face, prompt, seed, metric in rows:
            out.setdefault((face, prompt, int(seed)), set()).add(metric)
        return out

    def output(
        self, method: str, face: str, prompt: str, seed: int
    ) -> tuple[str | None, str, str | None] | None:
        """``(path, status, error)`` of a stored output, or ``None``."""
        row = self.conn.execute(
            "SELECT path, status, error FROM outputs WHERE method=? AND face=? AND prompt=? "
            "AND seed=?",
            (method, face, prompt, int(seed)),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def outputs(self, method: str | None = None) -> list[dict[str, Any]]:
        """Stored outputs as dicts."""
        sql = "SELECT method, face, prompt, seed, path, status, error, seconds FROM outputs"
        args: tuple = ()
        if method is not None:
            sql += " WHERE method=?"
            args = (method,)
        cols = ("method", "face", "prompt", "seed", "path", "status", "error", "seconds")
        return [dict(zip(cols, r)) for r in self.conn.execute(sql, args)]

    def rows(self, method: str | None = None, metric: str | None = None) -> list[ResultRow]:
        """Stored results, optionally for one method and/or metric."""
        sql = (
            "SELECT method, face, prompt, seed, metric, value, status, error, n, seconds "
            "FROM results"
        )
        clauses, args = [], []
        if method is not None:
            clauses.append("method=?")
            args.append(method)
        if metric is not None:
            clauses.append("metric=?")
            args.append(metric)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return [ResultRow(*r) for r in self.conn.execute(sql + " ORDER BY rowid", args)]

    def methods(self) -> dict[str, dict[str, Any]]:
        """``name -> {"spec", "settings", "cost"}`` in insertion order."""
        out = {}
        for name, spec, settings, cost in self.conn.execute(
            "SELECT name, spec, settings, cost FROM methods ORDER BY rowid"
        ):
            out[name] = {
                "spec": spec,
                "settings": json.loads(settings) if settings else {},
                "cost": json.loads(cost) if cost else {},
            }
        return out

    def prompts(self) -> dict[str, tuple[int, str]]:
        """``prompt -> (index, split)``."""
        rows = self.conn.execute("SELECT prompt, idx, split FROM prompts")
        return {p: (i, s) for p, i, s in rows}

    def metric_status(self) -> dict[str, tuple[str, str | None]]:
        """``metric -> (status, reason)``."""
        return {m: (s, r) for m, s, r in self.conn.execute("SELECT * FROM metric_status")}

    def meta(self) -> dict[str, Any]:
        """All meta values."""
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def count(self) -> int:
        """Number of result rows."""
        return int(self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
