"""Who may use the app: sign-in credentials, password hashes, and the exposure rule.

Passwords are never stored: ``--auth-file`` holds one ``user:hash`` a line, the hash being
scrypt (:func:`hashlib.scrypt`, a random 16-byte salt per user) in the self-describing form
``scrypt$N$r$p$salt$key`` (salt and key in base64). :class:`Credentials` is the callable that
Gradio's ``launch(auth=...)`` asks; it compares in constant time and spends the same work on an
unknown user as on a wrong password, so a login does not reveal which names exist. It counts
failed sign-ins and pauses a user name or client address that fails too often
(:mod:`.sign_in_limit`).

Nothing here imports Gradio.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from .sign_in_limit import SignInThrottle, client_address

#: scrypt's cost parameters (N, r, p): about 16 MiB and a few tens of ms a check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCHEME = "scrypt"
_USER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=32
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``password`` as ``scrypt$N$r$p$salt$key`` (a fresh random salt unless one is given)."""
    if not password:
        raise InputError("password: empty")
    salt = secrets.token_bytes(16) if salt is None else salt
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("not an scrypt hash")
    n, r, p = (int(v) for v in parts[1:4])
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of range")
    salt, key = (base64.b64decode(v, validate=True) for v in parts[4:6])
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (from :func:`hash_password`); constant-time
    comparison of the derived keys."""
    n, r, p, salt, key = _parse_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), key)


def check_user(user: str, where: str) -> str:
    """A user name: 1-64 of letters, digits and ``._@+-`` (it names the owner of identities)."""
    if not 1 <= len(user) <= 64 or not set(user) <= _USER_CHARS:
        raise InputError(f"{where}: user name must be 1-64 letters, digits or ._@+-")
    return user


def parse_auth_pair(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (``--auth``); the password may contain ``:``."""
    user, sep, password = text.partition(":")
    if not sep or not password:
        raise InputError("--auth: expected USER:PASSWORD")
    return check_user(user, "--auth"), password


def read_auth_file(path: str | os.PathLike) -> dict[str, str]:
    """The users of an ``--auth-file``: ``user:hash`` a line; blank lines and ``#`` comments
    skipped. A bad line is one error naming its number (never its content)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--auth-file: cannot read {file.name} ({type(exc).__name__})") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        where = f"--auth-file line {number}"
        if not sep:
            raise InputError(f"{where}: expected user:hash (write one with --add-user)")
        check_user(user, where)
        try:
            _parse_hash(encoded)
        except (ValueError, TypeError):
            raise InputError(f"{where}: not a password hash (write one with --add-user)") from None
        if user in users:
            raise InputError(f"{where}: user {user} appears twice")
        users[user] = encoded
    return users


def write_auth_user(path: str | os.PathLike, user: str, password: str) -> bool:
    """Add ``user`` to the auth file (or replace its hash), written atomically with mode 0600.
    Returns whether the user was new."""
    check_user(user, "--add-user")
    file = Path(path)
    lines = file.read_text(encoding="utf-8").splitlines() if file.exists() else []
    kept = [line for line in lines if line.partition(":")[0].strip() != user]
    kept.append(f"{user}:{hash_password(password)}")
    tmp = file.with_name(f".{file.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(kept) + "\n")
    os.replace(tmp, file)
    return len(kept) > len(lines)


class Credentials:
    """The users allowed to sign in, as Gradio's ``auth`` callable ``(user, password) -> bool``.

    A sign-in of a paused user name or client address raises
    :class:`~.sign_in_limit.SignInPaused` before any password is checked (the client address
    comes from :data:`~.sign_in_limit.client_address`; unknown, only the name is counted).

    Args:
        hashes: user -> password hash (an ``--auth-file``'s content).
        plain: ``(user, password)`` pairs (``--auth``); hashed here, at start.
        throttle: the failure counters (default: :class:`~.sign_in_limit.SignInThrottle` with
            the default limits).
    """

    def __init__(
        self,
        hashes: dict[str, str] | None = None,
        plain: Iterable[tuple[str, str]] = (),
        throttle: SignInThrottle | None = None,
    ) -> None:
        self._hashes = dict(hashes or {})
        for user, password in plain:
            self._hashes[user] = hash_password(password)
        # an unknown user costs the same scrypt work as a known one
        self._decoy = hash_password(secrets.token_hex(16))
        self.throttle = SignInThrottle() if throttle is None else throttle

    def __len__(self) -> int:
        return len(self._hashes)

    def __call__(self, username: str, password: str) -> bool:
        username, address = str(username), client_address.get()
        self.throttle.check(username, address)
        encoded = self._hashes.get(username)
        ok = verify_password(str(password), encoded or self._decoy) and encoded is not None
        if ok:
            self.throttle.succeeded(username)
        else:
            self.throttle.failed(username, address)
        return ok


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, signed_in: bool, public_without_auth: bool) -> None:
    """Refuse to serve other machines without sign-in, unless explicitly allowed."""
    if is_loopback(host) or signed_in or public_without_auth:
        return
    raise InputError(
        f"--host {host}: other machines could reach the app and its stored faces without "
        "sign-in; give --auth USER:PASSWORD or --auth-file FILE (or --public-without-auth)"
    )
