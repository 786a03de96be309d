"""The app's operations without a UI: gate, grid, frame rate, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instantportrait.app import handlers
from instantportrait.app.models import ModelRegistry
from instantportrait.errors import InputError


def test_grid_places_each_image_in_its_cell():
    red = Image.new("RGB", (4, 2), (255, 0, 0))
    blue = Image.new("RGB", (2, 2), (0, 0, 255))
    g = np.asarray(handlers.grid([red, blue, blue], columns=2))
    assert g.shape == (4, 8, 3)  # two rows of 4x2 cells
    assert (g[0:2, 0:4] == [255, 0, 0]).all()
    assert (g[0:2, 5:7] == [0, 0, 255]).all()  # the 2-px image centred in the 4-px cell
    assert (g[0:2, 4] == 255).all() and (g[2:4, 0] == [255, 255, 255]).all()
    assert (g[2:4, 1:3] == [0, 0, 255]).all() and (g[2:4, 4:] == 255).all()


def test_frame_rate_over_a_window():
    rate = handlers.FrameRate(window=3)
    assert rate.tick(0.0) == 0.0
    assert rate.tick(0.5) == pytest.approx(2.0)
    rate.tick(1.0)
    assert rate.tick(1.25) == pytest.approx(2 / 0.75)  # only the last 3 frames count


def test_instructions_one_per_line_and_checked():
    assert handlers.parse_instructions(" a red hat \n\n blue hair ") == ["a red hat", "blue hair"]
    with pytest.raises(InputError, match="empty"):
        handlers.parse_instructions("  \n ")
    with pytest.raises(InputError, match="at most"):
        handlers.parse_instructions("\n".join(["x"] * (handlers.MAX_INSTRUCTIONS + 1)))


def test_edit_grid_keeps_the_input_first_and_matches_the_pipeline(tiny_pipe, astronaut_path):
    import torch

    res = handlers.edit_portrait(
        tiny_pipe,
        astronaut_path,
        "a red hat\nblue hair",
        seed=3,
        resolution=64,
        measure_identity=False,
    )
    assert len(res.images) == 2
    w, h = res.images[0].size
    assert res.grid.size == (3 * w, h)
    direct = tiny_pipe(
        prompt="blue hair",
        image=str(astronaut_path),
        resolution=64,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    assert np.array_equal(np.asarray(res.images[1]), np.asarray(direct))
    cell = np.asarray(res.grid)[:, 2 * w :]
    assert np.array_equal(cell, np.asarray(direct))


def test_hostile_inputs_are_one_line_errors(tiny_pipe, hostile_files):
    for what, path in hostile_files.items():
        with pytest.raises(InputError) as info:
            handlers.edit_portrait(tiny_pipe, path, "a hat", measure_identity=False)
        assert "\n" not in str(info.value), what


def test_registry_loads_once_and_names_the_missing_option(tiny_model_dir):
    import threading

    calls = []

    registry = ModelRegistry(edit_model=str(tiny_model_dir))
    slot = registry.slots["edit"]
    real = slot.loader

    def counting(*a):
        calls.append(1)
        return real(*a)

    slot.loader = counting
    assert "loads on first use" in registry.status()["edit"]
    assert registry.page_status()["edit"] == "loads on first use"
    threads = [threading.Thread(target=registry.get, args=("edit",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and "loaded" in registry.status()["edit"]
    assert registry.page_status()["edit"] == "loaded"  # the page's header says so
    assert str(tiny_model_dir) not in str(registry.page_status())  # no server path
    with pytest.raises(InputError, match="edit: not available on this server"):
        ModelRegistry().get("edit")
