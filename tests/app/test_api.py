"""The app over HTTP through ``gradio_client``: a burst of requests, and hostile uploads."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")

#: httpx's default 5 s is shorter than a loaded 2-core machine may take to accept a request
#: while the queue's workers run: the client gets the patience a burst needs.
CLIENT_HTTPX = {"timeout": 120}


def _edit(client, path, instruction="a red hat", seed=0):
    return client.submit(
        gradio_client.handle_file(str(path)), instruction, 0, 1, seed, False, api_name="/edit"
    )


def _server_path(result) -> str:
    """The server-side file of an output (``download_files=False`` returns FileData)."""
    return result["path"] if isinstance(result, dict) else result.path


def test_twenty_concurrent_edits_all_complete(running_app, astronaut_path):
    url, _ = running_app
    # The outputs are read from the server's own files (same machine): what is tested is the
    # queue serving a burst, not twenty parallel downloads of 1 MB PNGs through one test client.
    client = gradio_client.Client(
        url, verbose=False, download_files=False, httpx_kwargs=dict(CLIENT_HTTPX)
    )
    start = time.monotonic()
    jobs = [_edit(client, astronaut_path, seed=i % 3) for i in range(20)]
    results = [job.result(timeout=300) for job in jobs]
    elapsed = time.monotonic() - start
    assert elapsed < 300
    sizes = set()
    grids = {}
    for i, (grid, report) in enumerate(results):
        img = Image.open(_server_path(grid))
        sizes.add(img.size)
        assert report.startswith("1 edit(s)")
        grids.setdefault(i % 3, []).append(np.asarray(img))
    assert len(sizes) == 1
    # Same seed -> same output, whatever the order the queue served them in.
    for same in grids.values():
        assert all(np.array_equal(same[0], g) for g in same[1:])
    assert not np.array_equal(grids[0][0], grids[1][0])


def test_hostile_upload_is_a_message_and_the_app_keeps_serving(
    running_app, hostile_files, astronaut_path
):
    url, _ = running_app
    client = gradio_client.Client(url, verbose=False, httpx_kwargs=dict(CLIENT_HTTPX))
    for what, path in hostile_files.items():
        with pytest.raises(Exception) as info:  # gradio_client raises AppError
            _edit(client, path).result(timeout=60)
        message = str(info.value)
        assert any(w in message for w in ("not an image", "empty", "pixels", "0 bytes")), (
            what,
            message,
        )
    grid_path, report = _edit(client, astronaut_path).result(timeout=120)
    assert Image.open(grid_path).size[0] > 0 and report.startswith("1 edit(s)")
