"""How many failed sign-ins the app allows before it pauses sign-in: per user name and per
client address, counted in memory.

After ``failures`` failed sign-ins of one user name within ``window`` seconds (or
``address_failures`` from one client address), every further sign-in of that name (or from that
address) is refused for ``lockout`` seconds, without its password being checked, so a correct
password does not help a guesser either. Names that exist and names that do not are counted and
refused alike: the pause reveals nothing about which users exist. A successful sign-in clears
its user name's failures (not its address's: one valid account must not reset the count of a
guesser trying other names from the same address).

The counters live in this process's memory: they start empty at each start, and several
server processes would each count on their own (``instantportrait app`` serves from one
process). The client address reaches Gradio's ``auth`` callable, which sees only the user name
and password, through :data:`client_address`, set per request by
:class:`instantportrait.app.serving.ClientAddress`.

Nothing here imports Gradio.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..errors import InputError, InstantPortraitError

logger = logging.getLogger("instantportrait.app")

#: The address of the client whose request is being served (``None``: not known).
client_address: ContextVar[str | None] = ContextVar("client_address", default=None)


@dataclass(frozen=True)
class SignInLimits:
    """When sign-in pauses.

    Attributes:
        failures: failed sign-ins of one user name that pause it (default 5).
        window: seconds over which failures are counted (default 900: 15 minutes).
        lockout: seconds a paused name or address stays paused (default 900).
        address_failures: failed sign-ins from one client address (any names) that pause it
            (default 20: an office behind one NAT address shares it); 0 turns it off.
    """

    failures: int = 5
    window: float = 15 * 60.0
    lockout: float = 15 * 60.0
    address_failures: int = 20

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise InputError(f"sign-in failures: at least 1, got {self.failures}")
        if self.address_failures < 0:
            raise InputError(
                f"sign-in failures per address: 0 (off) or more, got {self.address_failures}"
            )
        if not self.window > 0:
            raise InputError("sign-in window: must be positive")
        if not self.lockout > 0:
            raise InputError("sign-in lockout: must be positive")

    def describe(self) -> str:
        """One line for the console and the sign-in page."""
        line = (
            f"after {self.failures} failed sign-ins of a user name within "
            f"{_minutes(self.window)}, its sign-in pauses for {_minutes(self.lockout)}"
        )
        if self.address_failures:
            line += f" ({self.address_failures} failures from one address pause that address)"
        return line


def _minutes(seconds: float) -> str:
    minutes = seconds / 60.0
    return f"{minutes:g} minute{'' if minutes == 1 else 's'}"


class SignInPaused(InstantPortraitError):
    """Sign-in is paused for this user name or client address; ``retry_after`` in seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        minutes = max(1, math.ceil(retry_after / 60.0))
        super().__init__(
            f"sign-in: too many failed attempts; try again in {minutes} minute"
            + ("" if minutes == 1 else "s")
        )


@dataclass
class _Record:
    touched: float
    failures: deque[float] = field(default_factory=deque)
    paused_until: float = -math.inf


class SignInThrottle:
    """The failure counters (thread-safe, in memory).

    Args:
        limits: the thresholds.
        clock: seconds, monotonic (tests pass a fake one).
        max_tracked: names and addresses remembered at most; beyond it the least recently
            failed are forgotten, so a flood of made-up names cannot exhaust memory.
    """

    def __init__(
        self,
        limits: SignInLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = 100_000,
    ) -> None:
        self.limits = limits or SignInLimits()
        self._clock = clock
        self._max_tracked = max_tracked
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Names and addresses currently remembered."""
        with self._lock:
            self._forget_stale(self._clock())
            return len(self._records)

    def _keys(self, user: str, address: str | None) -> list[tuple[str, str, int]]:
        # a name longer than any valid one is kept as its digest (they can never sign in)
        name = user if len(user) <= 64 else hashlib.sha256(user.encode()).hexdigest()
        keys = [("user", name, self.limits.failures)]
        if address and self.limits.address_failures:
            keys.append(("address", address, self.limits.address_failures))
        return keys

    def _forget_stale(self, now: float) -> None:
        # records are ordered by their last failure; past the window and the lockout they
        # hold nothing
        horizon = max(self.limits.window, self.limits.lockout)
        while self._records:
            key, record = next(iter(self._records.items()))
            if record.touched + horizon > now:
                break
            del self._records[key]

    def check(self, user: str, address: str | None = None) -> None:
        """Raise :class:`SignInPaused` while ``user`` or ``address`` is paused."""
        with self._lock:
            now = self._clock()
            left = 0.0
            for kind, key, _ in self._keys(user, address):
                record = self._records.get((kind, key))
                if record is not None:
                    left = max(left, record.paused_until - now)
        if left > 0:
            raise SignInPaused(left)

    def failed(self, user: str, address: str | None = None) -> None:
        """Count a failed sign-in of ``user`` from ``address``; pause whichever reaches its
        limit."""
        with self._lock:
            now = self._clock()
            self._forget_stale(now)
            for kind, key, limit in self._keys(user, address):
                record = self._records.pop((kind, key), None) or _Record(touched=now)
                self._records[(kind, key)] = record  # now the most recent
                record.touched = now
                while record.failures and record.failures[0] <= now - self.limits.window:
                    record.failures.popleft()
                record.failures.append(now)
                if len(record.failures) >= limit:
                    record.failures.clear()
                    record.paused_until = now + self.limits.lockout
                    logger.warning(
                        "sign-in paused for %s: %d failed attempts for one %s",
                        _minutes(self.limits.lockout), limit,
                        "user name" if kind == "user" else "client address",
                    )  # fmt: skip
            while len(self._records) > self._max_tracked:
                self._records.popitem(last=False)

    def succeeded(self, user: str) -> None:
        """A successful sign-in clears ``user``'s failures."""
        with self._lock:
            for kind, key, _ in self._keys(user, None):
                self._records.pop((kind, key), None)
