"""The web app (Gradio, the ``app`` extra): ``instantportrait app`` or :func:`build_app`.

:mod:`.models` (lazy model slots) and the operations -- :mod:`.handlers` (edit, live),
:mod:`.methods` (FastFace, FPGA, DIIR), :mod:`.personalise` (FaceA-Net) -- import no UI library,
nor do :mod:`.access` (sign-in: password hashes, the loopback rule), :mod:`.sign_in_limit`
(failed sign-ins pause a name or address) and :mod:`.identities`
(who owns a tuned identity; deletion, retention). :mod:`.serving` (uploads through the gate,
the caller, one log line per refused request) and :mod:`.ui` (the page) use Gradio.
"""

from __future__ import annotations

from typing import Any

from .models import ModelRegistry

__all__ = ["ModelRegistry", "build_app"]


def build_app(registry: ModelRegistry, **kwargs: Any) -> Any:
    """The Gradio app for ``registry`` (see :func:`instantportrait.app.ui.build_app`)."""
    from .ui import build_app as _build

    return _build(registry, **kwargs)
