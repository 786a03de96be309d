"""How one pair is drawn (InstantPortrait, App. B.2): the settings, the backend interface.

:class:`GenerationSettings` holds what decides the images (resolution, steps, guidance, the
ControlNet and IP-Adapter scales, the canny thresholds, the seed, the image format);
:class:`Backend` is what draws them, the target from the target prompt and the input from the
identity prompt, the target's edges and the target itself (:class:`.models.DiffusersBackend`
for real models; tests inject their own); :func:`row_generators` seeds each row's two draws
by ``(seed, row)``, so a row draws the same pair whichever job, shard or rank draws it. The
sharded, resumable job that calls them is :mod:`.generation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

IMAGE_FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}


def parse_resolution(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> ``(width, height)``, both positive multiples of 8, at most 4096."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise InputError(
            f"--resolution: expected WIDTHxHEIGHT (e.g. 576x1024), got {text!r}"
        ) from None
    for side in (w, h):
        if side < 8 or side % 8 or side > 4096:
            raise InputError(f"--resolution: {text}: each side a multiple of 8 in [8, 4096]")
    return w, h


@dataclass(frozen=True)
class GenerationSettings:
    """How pairs are drawn. The default resolution is the paper's 1024x576 training size,
    portrait orientation (576 wide, 1024 high); steps and guidance are SDXL's usual."""

    width: int = 576
    height: int = 1024
    target_steps: int = 30
    input_steps: int = 30
    target_guidance: float = 5.0
    input_guidance: float = 5.0
    controlnet_scale: float = 0.6
    ip_adapter_scale: float = 0.6
    canny_low: float = 100.0
    canny_high: float = 200.0
    negative_prompt: str = ""
    seed: int = 0
    batch_size: int = 1
    image_format: str = "jpg"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        parse_resolution(f"{self.width}x{self.height}")
        for name in ("target_steps", "input_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.image_format not in IMAGE_FORMATS:
            raise InputError(f"--image-format: one of {', '.join(IMAGE_FORMATS)}")
        if not 0 <= self.canny_low <= self.canny_high:
            raise InputError("--canny-low/--canny-high: need 0 <= low <= high")


def row_generators(seed: int, row: int, device: Any) -> tuple[torch.Generator, torch.Generator]:
    """The target's and the input's generators of one row, seeded by ``(seed, row)``."""
    a, b = np.random.SeedSequence([int(seed), int(row)]).generate_state(2, dtype=np.uint64)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gens = []
    for s in (a, b):
        g = torch.Generator(device=dev.type if dev.type != "mps" else "cpu")
        g.manual_seed(int(s) & 0x7FFFFFFFFFFFFFFF)
        gens.append(g)
    return gens[0], gens[1]


class Backend:
    """What draws images: ``targets(rows, generators)`` and ``inputs(rows, targets, edges,
    generators)`` return PIL images; ``phase(name)`` brackets a shard's target or input work
    (the diffusers backend loads and frees pipelines there). Tests inject their own."""

    device: Any = "cpu"
    load_seconds: float = 0.0

    def phase(self, name: str):  # pragma: no cover - trivial default
        from contextlib import nullcontext

        return nullcontext()

    def targets(self, rows: Sequence[dict], generators: list) -> list[Image.Image]:
        raise NotImplementedError

    def inputs(self, rows, targets, edges, generators) -> list[Image.Image]:
        raise NotImplementedError
