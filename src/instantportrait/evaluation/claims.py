"""Claims: which running ``evaluate`` computes which item, so runs sharing a folder split work.

Before computing an item a run *claims* it in the store's ``claims`` table, in one locked
transaction, so two runs (or two ranks) never compute the same item. A claim names its owner
(one store object: host, process id, object id, opening time), its host, process id and the
time it was taken. A claim is *stale*, and is taken over, when its process is gone (same
host) or when it is older than :data:`CLAIM_TIMEOUT`; a run's own claims are dropped when it
closes its store. :class:`ItemClaims` is the part of :class:`~.store.ResultStore` that keeps
them.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

__all__ = ["CLAIM_TIMEOUT", "ITEM_WHERE", "ItemClaims", "ItemKey", "item_args"]

#: A claim older than this is considered abandoned (seconds).
CLAIM_TIMEOUT = 3 * 3600.0

#: An item's key in the store: (method key, subject, subject fingerprint, prompt, seed).
ItemKey = tuple[str, str, str, str, int]

#: The SQL condition selecting one item's rows; its arguments are :func:`item_args`.
ITEM_WHERE = "method=? AND subject=? AND subject_fp=? AND prompt=? AND seed=?"


def item_args(key: ItemKey) -> tuple[str, str, str, str, int]:
    """The arguments of :data:`ITEM_WHERE` for item ``key``."""
    return (*key[:4], int(key[4]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ItemClaims:
    """Claiming items; mixed into :class:`~.store.ResultStore`, whose ``conn``, ``owner``
    and ``transaction()`` it uses."""

    conn: Any
    owner: str

    def _claims_of(self, method: str) -> list[tuple]:
        return self.conn.execute(
            "SELECT owner, host, pid, since FROM claims WHERE method=?", (method,)
        ).fetchall()

    def _stale(self, claim: tuple) -> bool:
        owner, host, pid, since = claim
        if owner == self.owner:
            return False
        if time.time() - float(since or 0) > CLAIM_TIMEOUT:
            return True
        return host == socket.gethostname() and pid is not None and not _pid_alive(int(pid))

    def _held_by_other(self, key: ItemKey) -> bool:
        row = self.conn.execute(
            f"SELECT owner, host, pid, since FROM claims WHERE {ITEM_WHERE}", item_args(key)
        ).fetchone()
        return row is not None and row[0] != self.owner and not self._stale(row)

    def claim(self, key: ItemKey) -> bool:
        """Claim item ``key`` for this store object atomically; ``False`` when another live
        run holds it (a stale claim -- its process gone, or older than
        :data:`CLAIM_TIMEOUT` -- is taken over)."""
        with self.transaction():
            if self._held_by_other(key):
                return False
            self.conn.execute(
                "INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?,?,?,?,?)",
                (*item_args(key), self.owner, socket.gethostname(), os.getpid(), time.time()),
            )
        return True

    def claimed_by_other(self, key: ItemKey) -> bool:
        """Whether another live run holds a claim on ``key``."""
        return self._held_by_other(key)

    def release(self, key: ItemKey) -> None:
        """Drop this store's claim on ``key``."""
        with self.transaction():
            self.conn.execute(
                f"DELETE FROM claims WHERE {ITEM_WHERE} AND owner=?", (*item_args(key), self.owner)
            )

    def release_all(self) -> None:
        """Drop every claim of this store object."""
        with self.transaction():
            self.conn.execute("DELETE FROM claims WHERE owner=?", (self.owner,))

    def transaction(self):  # pragma: no cover - provided by the store
        raise NotImplementedError
