"""The results store: one SQLite file (``results.sqlite``) in the output folder.

Every result is keyed by everything that determines it:

* the **method key**: a hash of the method's kind, settings, dtype and model identity (a
  ``folder:`` method's image contents) -- :meth:`Method.fingerprint`;
* the **subject** (its name) and its **fingerprint** (the contents of every photo it names);
* the prompt text and the seed;
* the **metric key**: a hash of the metric, its settings, its models' identities and, for
  text metrics, the protocol's text template -- :func:`~.metrics.metric_key`.

Tables:

* ``results``: one row per key (the primary key, so a row is never doubled): ``value``
  (``NULL`` unless ``status = 'ok'``), ``status`` (``ok``; ``failed``: ``error`` says why;
  ``n/a``: the metric does not apply), ``n`` (values a group/set row aggregates),
  ``members`` (a hash of a group/set row's members: recomputed when they change),
  ``detail`` (JSON: per-identity values, sample counts...). Group/set/method rows use ``*``
  for what they aggregate (``prompt='*:SPLIT'``, ``subject='*'``, ``seed=-1``).
* ``outputs``: one row per generated output (method key, subject, fingerprint, prompt,
  seed): its PNG (relative to the folder), status, error, seconds.
* ``methods``: name -> SPEC, method key, settings, cost. A name keeps its SPEC text; a name
  whose key changes under the same SPEC (a new dtype, changed folder images, changed model
  files) gets the new identity and its old rows are dropped.
* ``prompts``: the current run's prompts (text, index, split).
* ``claims``: items being computed by a running ``evaluate`` (so concurrent runs share work;
  :mod:`.claims`).
* ``metric_status``, ``meta`` (``run``: the current run's keys; protocol; environment).

The report shows only the current run's rows (``meta.run``). Every item's rows are written
in one transaction; registration takes SQLite's write lock for its whole duration, and a
store that stays locked gives a one-line "busy" error.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .claims import ITEM_WHERE, ItemClaims, ItemKey, item_args

__all__ = ["STORE_NAME", "ResultRow", "ResultStore", "StoreBusy"]

STORE_NAME = "results.sqlite"
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    method TEXT NOT NULL, subject TEXT NOT NULL, subject_fp TEXT NOT NULL, prompt TEXT NOT NULL,
    seed INTEGER NOT NULL, metric TEXT NOT NULL, metric_key TEXT NOT NULL, value REAL,
    status TEXT NOT NULL, error TEXT, n INTEGER, members TEXT, detail TEXT, seconds REAL,
    created TEXT NOT NULL,
    PRIMARY KEY (method, subject, subject_fp, prompt, seed, metric, metric_key)
);
CREATE TABLE IF NOT EXISTS outputs (
    method TEXT NOT NULL, subject TEXT NOT NULL, subject_fp TEXT NOT NULL, prompt TEXT NOT NULL,
    seed INTEGER NOT NULL, path TEXT, status TEXT NOT NULL, error TEXT, seconds REAL,
    created TEXT NOT NULL,
    PRIMARY KEY (method, subject, subject_fp, prompt, seed)
);
CREATE TABLE IF NOT EXISTS methods (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, key TEXT NOT NULL, settings TEXT, cost TEXT,
    fingerprint TEXT
);
CREATE TABLE IF NOT EXISTS prompts (
    prompt TEXT PRIMARY KEY, idx INTEGER, split TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    method TEXT NOT NULL, subject TEXT NOT NULL, subject_fp TEXT NOT NULL, prompt TEXT NOT NULL,
    seed INTEGER NOT NULL, owner TEXT NOT NULL, host TEXT, pid INTEGER, since REAL,
    PRIMARY KEY (method, subject, subject_fp, prompt, seed)
);
CREATE TABLE IF NOT EXISTS metric_status (
    metric TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class StoreBusy(InputError):
    """The store stayed locked by another process longer than the timeout."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class ResultRow:
    """One result: the key and what was measured. ``method`` is the method *key* in the
    store; :meth:`ResultStore.rows` can translate it to the current name."""

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
    subject_fp: str = ""
    metric_key: str = ""
    members: str | None = None
    detail: dict[str, Any] | None = None


class ResultStore(ItemClaims):
    """The SQLite store of one evaluation folder (see the module docstring).

    Args:
        folder: the output folder; the store is ``folder/results.sqlite``.
        timeout: seconds to wait for another process's write lock before :class:`StoreBusy`.
    """

    def __init__(self, folder: str | os.PathLike, timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / STORE_NAME
        self.timeout = timeout
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}:{time.time():.6f}"
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            self._execute_busy(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))
            self.conn.execute("PRAGMA synchronous=NORMAL")
            # version and tables are read, and the schema written, under one write lock: a
            # store opened by two runs at once is created once and never seen half-made
            with self.transaction():
                version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                tables = {
                    r[0]
                    for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                old = bool(tables) and version != SCHEMA_VERSION
                if not old and not {"results", "outputs", "methods", "claims"} <= tables:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if old:
                self.conn.close()
                raise InputError(
                    f"{self.path}: made by an older version of the harness (schema "
                    f"{version}); use another --out folder"
                )
        except StoreBusy:
            raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise self._busy(exc) from None
            raise InputError(f"{self.path}: not a results store ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a results store ({exc})") from None

    def _busy(self, exc: sqlite3.OperationalError) -> StoreBusy:
        return StoreBusy(
            f"{self.folder}: busy: another evaluate has held the results store for over "
            f"{self.timeout:g} s ({exc}); wait for it to finish or use another --out"
        )

    def _execute_busy(self, fn):
        """``fn()``, retried while SQLite says the database is locked, up to the timeout.

        SQLite's own busy wait does not cover every case: switching a new database to WAL,
        or a deferred transaction's upgrade that would deadlock, fail at once with "database
        is locked" when two processes open one store together. Those are retried here with a
        growing pause (up to 0.5 s); after ``timeout`` seconds it is :class:`StoreBusy`.
        """
        deadline = time.monotonic() + self.timeout
        pause = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise self._busy(exc) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def transaction(self):
        """A context manager holding SQLite's write lock (``BEGIN IMMEDIATE``) throughout."""
        store = self

        class _Tx:
            def __enter__(self_inner):
                store._execute_busy(lambda: store.conn.execute("BEGIN IMMEDIATE"))
                return store

            def __exit__(self_inner, exc_type, exc, tb):
                if exc_type is None:
                    store.conn.execute("COMMIT")
                else:
                    store.conn.execute("ROLLBACK")
                return False

        return _Tx()

    def close(self) -> None:
        """Release this store's claims and close the connection."""
        with contextlib.suppress(sqlite3.Error):
            self.release_all()
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def add_rows(self, rows: Iterable[ResultRow]) -> None:
        """Write rows in one transaction (a key already present is replaced, never doubled)."""
        now = _now()
        data = [
            (
                r.method,
                r.face,
                r.subject_fp,
                r.prompt,
                int(r.seed),
                r.metric,
                r.metric_key,
                None if r.value is None else float(r.value),
                r.status,
                r.error,
                r.n,
                r.members,
                None if r.detail is None else json.dumps(r.detail, sort_keys=True, default=str),
                r.seconds,
                now,
            )
            for r in rows
        ]
        if not data:
            return
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", data
            )

    def set_output(
        self,
        key: ItemKey,
        path: str | None,
        status: str = "ok",
        error: str | None = None,
        seconds: float | None = None,
    ) -> None:
        """Record a generated output (or its failure) of item ``key``."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO outputs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (*item_args(key), path, status, error, seconds, _now()),
            )

    def register_methods(self, methods: dict[str, tuple[str, str, dict, dict]]) -> list[str]:
        """Record ``name -> (spec, key, settings, fingerprint data)`` in one locked
        transaction. A name stored with another SPEC text is refused; a name whose key
        changed takes the new key, and the old key's rows are dropped unless another live
        run still claims items of it (then refused as busy). Returns the renewed names."""
        renewed = []
        with self.transaction():
            for name, (spec, key, settings, fp) in methods.items():
                row = self.conn.execute(
                    "SELECT spec, key FROM methods WHERE name=?", (name,)
                ).fetchone()
                if row is not None and row[0] != spec:
                    raise InputError(
                        f"--method {name}: this store has {name} as {row[0]!r}, not {spec!r}; "
                        "give the new SPEC another name or use another --out folder"
                    )
                if row is not None and row[1] != key:
                    live = [c for c in self._claims_of(row[1]) if not self._stale(c)]
                    if live:
                        raise StoreBusy(
                            f"--method {name}: another evaluate is running {name} with other "
                            "settings in this folder; wait for it or use another --out"
                        )
                    shared = self.conn.execute(
                        "SELECT COUNT(*) FROM methods WHERE key=? AND name<>?", (row[1], name)
                    ).fetchone()[0]
                    if not shared:  # another name with the same settings keeps them
                        for table in ("results", "outputs", "claims"):
                            self.conn.execute(f"DELETE FROM {table} WHERE method=?", (row[1],))
                    renewed.append(name)
                self.conn.execute(
                    "INSERT INTO methods(name, spec, key, settings, fingerprint) "
                    "VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET spec=excluded.spec, "
                    "key=excluded.key, settings=excluded.settings, "
                    "fingerprint=excluded.fingerprint",
                    (
                        name,
                        spec,
                        key,
                        json.dumps(settings, sort_keys=True, default=str),
                        json.dumps(fp, sort_keys=True, default=str),
                    ),
                )
        return renewed

    def set_method_cost(self, name: str, cost: dict[str, Any]) -> None:
        """Record a method's cost (parameters, steps)."""
        with self.transaction():
            self.conn.execute(
                "UPDATE methods SET cost=? WHERE name=?", (json.dumps(cost, default=str), name)
            )

    def set_prompts(self, prompts: Sequence[tuple[str, int, str]]) -> None:
        """Record ``(prompt, index, split)`` for every prompt of the current run."""
        with self.transaction():
            self.conn.execute("DELETE FROM prompts")
            self.conn.executemany("INSERT OR REPLACE INTO prompts VALUES (?,?,?)", prompts)

    def set_metric_status(self, metric: str, status: str, reason: str | None = None) -> None:
        """Record whether a requested metric is ``available`` or ``unavailable`` (and why)."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO metric_status VALUES (?,?,?)", (metric, status, reason)
            )

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under ``key``."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES (?,?)", (key, json.dumps(value, default=str))
            )

    def delete_failed(self, methods: Sequence[str] | None = None) -> int:
        """Drop failed results and outputs (``--retry-failed``), of the given method keys
        (default all); returns how many rows."""
        where, args = "status='failed'", ()
        if methods is not None:
            where += f" AND method IN ({','.join('?' * len(methods))})"
            args = tuple(methods)
        with self.transaction():
            n = self.conn.execute(f"DELETE FROM results WHERE {where}", args).rowcount
            n += self.conn.execute(f"DELETE FROM outputs WHERE {where}", args).rowcount
            # rows recorded for a failed generation (FFC) go with it
            n += self.conn.execute(
                "DELETE FROM results WHERE error='generation failed' AND NOT EXISTS (SELECT 1 "
                "FROM outputs o WHERE o.method=results.method AND o.subject=results.subject AND "
                "o.subject_fp=results.subject_fp AND o.prompt=results.prompt AND "
                "o.seed=results.seed)"
            ).rowcount
        return n

    # ------------------------------------------------------------------ reading
    def done_keys(self, method: str) -> dict[tuple[str, str, str, int], set[tuple[str, str]]]:
        """``(subject, fingerprint, prompt, seed) -> {(metric, metric key)}`` stored for
        method key ``method``."""
        out: dict[tuple[str, str, str, int], set[tuple[str, str]]] = {}
        rows = self.conn.execute(
            "SELECT subject, subject_fp, prompt, seed, metric, metric_key FROM results "
            "WHERE method=?",
            (method,),
        )
        for subject, fp, prompt, seed, metric, mkey in rows:
            out.setdefault((subject, fp, prompt, int(seed)), set()).add((metric, mkey))
        return out

    def done_item(self, key: ItemKey) -> set[tuple[str, str]]:
        """``{(metric, metric key)}`` stored for one item."""
        rows = self.conn.execute(
            f"SELECT metric, metric_key FROM results WHERE {ITEM_WHERE}", item_args(key)
        )
        return {(m, k) for m, k in rows}

    def output(self, key: ItemKey) -> tuple[str | None, str, str | None] | None:
        """``(path, status, error)`` of a stored output, or ``None``."""
        row = self.conn.execute(
            f"SELECT path, status, error FROM outputs WHERE {ITEM_WHERE}", item_args(key)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def outputs(self, method: str | None = None) -> list[dict[str, Any]]:
        """Stored outputs as dicts (``method`` is the method key)."""
        sql = (
            "SELECT method, subject, subject_fp, prompt, seed, path, status, error, seconds "
            "FROM outputs"
        )
        args: tuple = ()
        if method is not None:
            sql += " WHERE method=?"
            args = (method,)
        cols = ("method", "face", "subject_fp", "prompt", "seed", "path", "status", "error")
        cols += ("seconds",)
        return [dict(zip(cols, r)) for r in self.conn.execute(sql + " ORDER BY rowid", args)]

    def rows(self, method: str | None = None, metric: str | None = None) -> list[ResultRow]:
        """Stored results, optionally for one method key and/or metric name."""
        sql = (
            "SELECT method, subject, prompt, seed, metric, value, status, error, n, seconds, "
            "subject_fp, metric_key, members, detail FROM results"
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
        out = []
        for r in self.conn.execute(sql + " ORDER BY rowid", args):
            out.append(ResultRow(*r[:13], json.loads(r[13]) if r[13] else None))
        return out

    def methods(self) -> dict[str, dict[str, Any]]:
        """``name -> {"spec", "key", "settings", "cost", "fingerprint"}`` in insertion order."""
        out = {}
        for name, spec, key, settings, cost, fp in self.conn.execute(
            "SELECT name, spec, key, settings, cost, fingerprint FROM methods ORDER BY rowid"
        ):
            out[name] = {
                "spec": spec,
                "key": key,
                "settings": json.loads(settings) if settings else {},
                "cost": json.loads(cost) if cost else {},
                "fingerprint": json.loads(fp) if fp else {},
            }
        return out

    def prompts(self) -> dict[str, tuple[int, str]]:
        """``prompt -> (index, split)`` of the current run."""
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
