"""The harness's side of a metric worker: a process in the metric's own environment.

:class:`MetricWorker` starts the worker script (:mod:`.worker_scripts.protocol` describes the
JSON-lines protocol) with the environment's interpreter, waits for it to be ready, and sends
one image at a time. Failures are one line: the environment missing (naming the command that
creates it), the model not loading (the worker's own line), a crash (the last line it wrote
to standard error), or no answer in time.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import InstantPortraitError
from . import metric_envs

__all__ = ["MetricWorker", "MetricWorkerError"]


class MetricWorkerError(InstantPortraitError, RuntimeError):
    """A metric worker failed; the message is one line saying why."""


class MetricWorker:
    """A running worker for one metric environment.

    Args:
        name: the environment (:data:`~.metric_envs.ENVS`).
        weights: what the worker loads (a local folder or file, or a Hub id in the
            environment's cache).
        device: the device the worker uses.
        python, script: override the environment's interpreter and worker script (tests).
        load_timeout, call_timeout: seconds to wait for ready, and for each score.
    """

    def __init__(
        self,
        name: str,
        weights: str,
        device: str = "cpu",
        *,
        python: str | os.PathLike | None = None,
        script: str | os.PathLike | None = None,
        load_timeout: float = 1800.0,
        call_timeout: float = 600.0,
    ) -> None:
        self.name = name
        python = Path(python) if python else metric_envs.env_python(name)
        script = Path(script) if script else metric_envs.worker_script(name)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cache = metric_envs.hf_cache(name) if name in metric_envs.ENVS else None
        if cache is not None and cache.is_dir():
            env["HF_HUB_CACHE"] = str(cache)
        env.pop("PYTHONPATH", None)  # the worker sees only its own environment
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives with the worker
        self._tmp = tempfile.TemporaryDirectory(prefix=f"ip-{name}-")
        self._next = 0
        self.call_timeout = call_timeout
        self.proc = subprocess.Popen(
            [str(python), str(script), "--weights", str(weights), "--device", str(device)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        atexit.register(self.close)
        first = self._read(load_timeout, "loading")
        if "error" in first or not first.get("ready"):
            self.close()
            raise MetricWorkerError(f"{name}: {first.get('error', 'the worker did not start')}")

    def _last_stderr_line(self) -> str:
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "no output"

    def _read(self, timeout: float, doing: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise MetricWorkerError(f"{self.name}: no answer in {timeout:g} s ({doing})")
                if sel.select(timeout=min(left, 1.0)):
                    line = self.proc.stdout.readline()
                    if not line:
                        code = self.proc.wait()
                        raise MetricWorkerError(
                            f"{self.name}: the worker ended (exit {code}) while {doing}: "
                            f"{self._last_stderr_line()}"
                        )
                    try:
                        return json.loads(line)
                    except json.JSONDecodeError:
                        continue  # not a protocol line (a library printing to stdout)

    def score(self, image: Image.Image, text: str = "", task: str = "") -> float:
        """The metric's score of ``image`` (with ``text`` / ``task`` where it takes them)."""
        if self.proc.poll() is not None:
            raise MetricWorkerError(f"{self.name}: the worker is not running")
        self._next += 1
        path = Path(self._tmp.name) / f"{self._next}.png"
        image.convert("RGB").save(path)
        request = {"id": self._next, "image": str(path), "text": text, "task": task}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = self._read(self.call_timeout, "scoring")
        finally:
            path.unlink(missing_ok=True)
        if reply.get("id") != self._next:
            raise MetricWorkerError(
                f"{self.name}: answer to request {reply.get('id')} out of order"
            )
        if "error" in reply:
            raise MetricWorkerError(f"{self.name}: {reply['error']}")
        return float(reply["score"])

    def close(self) -> None:
        """End the worker (closing its input ends it; killed if it does not)."""
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()
            proc.wait()
