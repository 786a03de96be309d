"""Where the app keeps tuned identities, who owns them, and when they go.

Layout: ``ROOT/<owner key>/<id>/`` holds ``identity.json`` (its creation time), ``photos/``
(the uploaded photos, while tuning runs or with ``--keep-photos``) and ``run/`` (the
trainer's folder; ``run/final`` is the LoRA). The owner key is a hash of the owner (a
signed-in user name, or a browser session when sign-in is off), so no name is written to disk
and one owner's folder never holds another's identity.

Every lookup goes through the caller's own folder: an id that is malformed, unknown, or
someone else's gets the same answer (:data:`UNKNOWN`), so ids cannot be probed. Deletion
renames the folder away first (it disappears at once), then removes it.

Nothing here imports Gradio.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError

logger = logging.getLogger("instantportrait.app")

#: The one answer for an id the caller cannot use (malformed, unknown, or someone else's).
UNKNOWN = "identity: no such identity among yours; tune a person first or pick one from your list"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_META = "identity.json"


def owner_key(owner: str) -> str:
    """The folder name of ``owner``: a hash, so names and session ids never reach the disk."""
    return hashlib.sha256(f"instantportrait-owner:{owner}".encode()).hexdigest()[:32]


class IdentityStore:
    """Tuned identities on disk, each owned by one user or browser session.

    Args:
        root: the folder that holds every owner's identities (``WORKDIR/faceanet``).
        on_remove: called with an identity's folder before it is removed (to drop caches).
    """

    def __init__(self, root: str | Path, on_remove: Callable[[Path], None] | None = None) -> None:
        self.root = Path(root)
        self.on_remove = on_remove
        self._busy: set[Path] = set()  # folders being tuned: retention leaves them alone
        self._lock = threading.Lock()

    def _owner_dir(self, owner: str) -> Path:
        if not owner:
            raise InputError("identity: no owner (sign in, or open the app in a browser)")
        return self.root / owner_key(owner)

    def list(self, owner: str) -> list[str]:
        """The ids of ``owner``'s tuned identities, oldest first."""
        folder = self._owner_dir(owner)
        if not folder.is_dir():
            return []
        done = [p for p in folder.iterdir() if _ID.match(p.name) and (p / "run" / "final").is_dir()]
        return [p.name for p in sorted(done, key=lambda p: (self.created(p), p.name))]

    def count(self, owner: str) -> int:
        """``owner``'s identities, tuned or being tuned."""
        folder = self._owner_dir(owner)
        return sum(1 for p in folder.iterdir() if _ID.match(p.name)) if folder.is_dir() else 0

    def find(self, owner: str, identity: object) -> Path:
        """The folder of ``owner``'s tuned identity; anything else is :data:`UNKNOWN`."""
        if not isinstance(identity, str) or not _ID.match(identity):
            raise InputError(UNKNOWN)
        folder = self._owner_dir(owner) / identity
        if not (folder / "run" / "final").is_dir():
            raise InputError(UNKNOWN)
        return folder

    def create(self, owner: str) -> tuple[str, Path]:
        """A new, empty identity folder of ``owner`` (marked busy until :meth:`release`)."""
        identity = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self._owner_dir(owner) / identity
        folder.mkdir(parents=True)
        (folder / _META).write_text(json.dumps({"created": time.time()}))
        with self._lock:
            self._busy.add(folder)
        return identity, folder

    def release(self, folder: Path) -> None:
        """Tuning of ``folder`` ended (retention may now remove it)."""
        with self._lock:
            self._busy.discard(folder)

    @staticmethod
    def created(folder: Path) -> float:
        """When the identity was created (its ``identity.json``; else the folder's time)."""
        try:
            return float(json.loads((folder / _META).read_text())["created"])
        except (OSError, ValueError, KeyError, TypeError):
            return folder.stat().st_mtime

    def remove(self, folder: Path) -> None:
        """Remove one identity folder and everything in it."""
        if self.on_remove is not None:
            self.on_remove(folder)
        trash = folder.with_name(f".deleting-{folder.name}-{uuid.uuid4().hex[:6]}")
        try:
            folder.rename(trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # the owner's folder, when that was their last identity

    def delete(self, owner: str, identity: object) -> None:
        """Delete ``owner``'s identity (photos, LoRA, every file); :data:`UNKNOWN` otherwise."""
        self.remove(self.find(owner, identity))

    def expire(self, max_age_hours: float, now: float | None = None) -> int:
        """Remove every identity created more than ``max_age_hours`` ago (any owner), and
        leftovers of interrupted deletions; returns how many identities were removed."""
        if not self.root.is_dir():
            return 0
        limit = (time.time() if now is None else now) - max_age_hours * 3600
        removed = 0
        for owner in [p for p in self.root.iterdir() if p.is_dir()]:
            for folder in list(owner.iterdir()):
                if folder.name.startswith(".deleting-"):
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                with self._lock:
                    busy = folder in self._busy
                if not busy and folder.is_dir() and self.created(folder) < limit:
                    self.remove(folder)
                    removed += 1
            with contextlib.suppress(OSError):
                owner.rmdir()
        return removed


class RetentionSweeper:
    """Runs :meth:`IdentityStore.expire` now and then every ``interval`` seconds (a daemon
    thread; :meth:`stop` ends it)."""

    def __init__(self, store: IdentityStore, hours: float, interval: float = 3600.0) -> None:
        self.store = store
        self.hours = float(hours)
        self.interval = float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> int:
        removed = self.store.expire(self.hours)
        if removed:
            logger.info("retention: removed %d identit%s older than %g h", removed,
                        "y" if removed == 1 else "ies", self.hours)  # fmt: skip
        return removed

    def start(self) -> RetentionSweeper:
        self.sweep()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive one bad folder
                logger.error("retention: sweep failed (%s)", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
