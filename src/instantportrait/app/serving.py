"""How a request reaches the app's operations: uploads through the input gate, the caller's
identity, and one line per refused or failed request.

- :func:`gate_upload` / :func:`gate_uploads` / :func:`gate_pose`: every upload passes the
  project's gate before anything opens it; messages name the field ("portrait", "photo 2"),
  never the uploaded file's name or its path on the server.
- :func:`owner_of`: who a request belongs to: the signed-in user, else the browser session.
- :func:`answers`: an operation's errors become a message in the page (and the API's error)
  and ONE log line, with any file path replaced by ``<file>``; no traceback for a refused
  request, and none with paths for a failed one.
- :func:`discard_uploads`: remove uploaded files from Gradio's upload folder.
- :func:`sign_in_options`: the ``launch()`` arguments of sign-in: the credentials, a paused
  sign-in answered in one line, and :class:`ClientAddress`, which hands each request's
  client address to the credentials (Gradio's ``auth`` callable sees only name and password).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError, InstantPortraitError, optional_import

gr = optional_import("gradio", "app", "the web app")
logger = logging.getLogger("instantportrait.app")

_PART = r"[^\s/\\:;,'\"()\[\]]"
#: an absolute path (POSIX or Windows) of two parts or more
_PATH = re.compile(rf"(?<![\w.~-])(?:[A-Za-z]:)?[/\\](?:{_PART}+[/\\])+{_PART}*")


#: the rest of a path with spaces: words holding a separator right after a scrubbed path
_PATH_REST = re.compile(r"<file>(?: [^\s]*[/\\][^\s]*)+")


def scrub(text: str) -> str:
    """``text`` on one line with every absolute file path replaced by ``<file>``."""
    return _PATH_REST.sub("<file>", _PATH.sub("<file>", " ".join(str(text).split())))


def gate_upload(payload: Any, name: str = "upload") -> Any:
    """An image payload as Gradio sends it, through :func:`instantportrait.io.load_image`.

    The events that take uploads run with ``preprocess=False``, so Gradio never opens an
    upload itself: the project's gate sees it first (size limit, decompression bombs, empty
    and non-image files), and a rejection is one line shown in the page.
    """
    from ..io import load_image

    if payload is None:
        return None
    if isinstance(payload, dict):
        url, path = payload.get("url"), payload.get("path")
    else:
        url, path = getattr(payload, "url", None), getattr(payload, "path", None)
    if url and str(url).startswith("data:"):
        try:
            data = base64.b64decode(str(url).split(",", 1)[1], validate=False)
        except (ValueError, IndexError):
            raise InputError(f"{name}: not a valid data URL") from None
        return load_image(data, name=name)
    if path is None:
        raise InputError(f"{name}: no file arrived")
    return load_image(path, name=name)


#: Largest pose keypoints JSON accepted (bytes).
MAX_POSE_JSON = 1 << 20


def gate_uploads(payloads: Any, name: str) -> list[Any]:
    """Several uploads (a multi-file field) through :func:`gate_upload`, numbered in messages."""
    if payloads is None:
        return []
    items = payloads if isinstance(payloads, list) else [payloads]
    return [gate_upload(p, f"{name} {i + 1}") for i, p in enumerate(items) if p is not None]


def gate_pose(payload: Any) -> Any:
    """A pose upload: a keypoints JSON's bytes (size-capped), or an image through the gate."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        path, orig = payload.get("path"), payload.get("orig_name") or ""
    else:
        path, orig = getattr(payload, "path", None), getattr(payload, "orig_name", "") or ""
    if path and (str(orig) or str(path)).lower().endswith(".json"):
        import os

        if os.path.getsize(path) > MAX_POSE_JSON:
            raise InputError(f"pose: a keypoints JSON over {MAX_POSE_JSON} bytes")
        with open(path, "rb") as f:
            return f.read()
    return gate_upload(payload, "pose")


def owner_of(request: Any) -> str:
    """The owner of what a request stores: ``user:NAME`` when signed in, else
    ``session:HASH`` (Gradio's per-browser-tab session; each ``gradio_client.Client`` has its
    own)."""
    user = getattr(request, "username", None)
    if user:
        return f"user:{user}"
    session = getattr(request, "session_hash", None)
    if session:
        return f"session:{session}"
    raise InputError("request: no session; open the app in a browser or use gradio_client")


def answers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an operation as an endpoint: the project's one-line errors become a Gradio message
    and one WARNING line (``refused /name: ...``); anything else one ERROR line (``failed
    /name: ...``) and a message that says so. Paths are scrubbed from both."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InstantPortraitError as exc:
            message = scrub(str(exc))
            logger.warning("refused /%s: %s", name, message)
            raise gr.Error(message, print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - one line, no traceback with paths
            logger.error("failed /%s: %s: %s", name, type(exc).__name__, scrub(str(exc)))
            logger.debug("failed /%s", name, exc_info=True)
            raise gr.Error(
                f"{name}: internal error ({type(exc).__name__}); the server's log has a line "
                "about it",
                print_exception=False,
            ) from None

    return wrapper


def discard_uploads(payloads: Any, upload_folder: str | os.PathLike) -> None:
    """Delete uploaded files (Gradio payloads) that lie in ``upload_folder``, and the
    per-upload folders Gradio made for them when left empty."""
    root = Path(upload_folder).resolve()
    items = payloads if isinstance(payloads, list) else [payloads]
    for payload in items:
        path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
        if not path:
            continue
        file = Path(path).resolve()
        if root not in file.parents:
            continue
        file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            file.parent.rmdir()


class ClientAddress:
    """ASGI middleware: each HTTP request's client address in
    :data:`~.sign_in_limit.client_address` while it is served.

    The address is the one the server reports: behind a reverse proxy, the proxy's
    ``X-Forwarded-For`` when the proxy connects from an address uvicorn trusts
    (``FORWARDED_ALLOW_IPS``, default ``127.0.0.1,::1``), else the proxy's own address.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from .sign_in_limit import client_address

        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = client_address.set(str(client[0]) if client else None)
        try:
            await self.app(scope, receive, send)
        finally:
            client_address.reset(token)


def sign_in_options(credentials: Any) -> dict[str, Any]:
    """The ``launch()`` arguments for ``credentials`` (an :class:`~.access.Credentials`;
    ``None``: sign-in off): ``auth``, the limits on the sign-in page (``auth_message``), and
    the middleware that tells the credentials the client's address (``app_kwargs``).

    A sign-in while paused is answered ``400``, as a wrong password is, but with the one-line
    reason and ``Retry-After``: Gradio's sign-in page reacts to ``400`` only (it shows
    "incorrect credentials"; a ``429`` would leave it silent), the limits are written above
    its form, and an HTTP client reads the reason. ``auth`` is a coroutine that checks the
    password on a worker thread, off the server's event loop."""
    if credentials is None:
        return {"auth": None}
    import math

    from fastapi import HTTPException
    from starlette.middleware import Middleware

    from .sign_in_limit import SignInPaused

    async def auth(username: str, password: str) -> bool:
        # scrypt takes tens of milliseconds of CPU: on a worker thread (the client address's
        # context variable travels with it), so one sign-in never stalls the server's event loop
        # and everyone's requests with it. Gradio awaits a coroutine ``auth``.
        try:
            return await asyncio.to_thread(credentials, username, password)
        except SignInPaused as exc:
            headers = {"Retry-After": str(math.ceil(exc.retry_after))}
            raise HTTPException(status_code=400, detail=str(exc), headers=headers) from None

    limits = credentials.throttle.limits.describe()
    return {
        "auth": auth,
        "auth_message": f"{limits[0].upper()}{limits[1:]}.",
        "app_kwargs": {"middleware": [Middleware(ClientAddress)]},
    }
