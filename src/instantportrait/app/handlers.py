"""The operations behind the app's tabs, free of any UI library.

Every image that arrives passes through :func:`instantportrait.io.load_image` (the input gate:
size limit, decompression bombs, non-images) and every prompt through
:func:`instantportrait.io.check_prompt`; a rejected input raises :class:`InputError` with one
line, which the UI shows as a message while the app keeps serving.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..io import check_prompt, load_image

#: Most instructions one grid request may carry.
MAX_INSTRUCTIONS = 8
#: Long side of the frames the live tab edits (speed over detail).
LIVE_RESOLUTION = 256


@dataclass(frozen=True)
class EditResult:
    """What the edit tab shows: the outputs, a grid with the input first, and the scores."""

    images: list[Image.Image]
    grid: Image.Image
    similarity: list[str]
    seconds: float


def parse_instructions(text: Any) -> list[str]:
    """One instruction a line (blank lines skipped), each through the prompt gate."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("instruction: empty; write what to change, e.g. 'wearing a red hat'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_INSTRUCTIONS:
        raise InputError(f"instruction: {len(lines)} lines; at most {MAX_INSTRUCTIONS} at once")
    return [check_prompt(line, name=f"instruction {i + 1}") for i, line in enumerate(lines)]


def grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile images of possibly different sizes left to right, top to bottom (cells of the
    largest size, each image centred)."""
    if not images:
        raise ValueError("grid: no images")
    cols = columns or len(images)
    rows = -(-len(images) // cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    canvas = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas.paste(im, (c * w + (w - im.width) // 2, r * h + (h - im.height) // 2))
    return canvas


def identity_line(source: Image.Image, output: Image.Image) -> str:
    """dlib's verdict on whether the output shows the input's person (distance < 0.6)."""
    from ..faces import NoFaceFoundError, face_similarity

    try:
        sim = face_similarity(source, output)
    except NoFaceFoundError:
        return "identity not measured: no face found in the input or the output"
    except Exception as exc:  # noqa: BLE001 - a missing face stack must not fail the edit
        return f"identity not measured: {exc}"
    verdict = "same person" if sim.same_person else "different person"
    return f"dlib distance {sim.distance:.3f} ({verdict}; threshold {sim.threshold})"


def edit_portrait(
    pipe: Any,
    image: Any,
    instructions: Any,
    *,
    steps: int | None = None,
    iterations: int = 1,
    seed: int = 0,
    resolution: int = 512,
    measure_identity: bool = True,
) -> EditResult:
    """Edit one portrait by one or more instructions (one line each), seeded."""
    source = load_image(image, name="portrait")
    prompts = parse_instructions(instructions)
    if steps is not None and not 1 <= int(steps) <= 100:
        raise InputError(f"steps: {steps}; between 1 and 100")
    if not 1 <= int(iterations) <= 4:
        raise InputError(f"style boost: {iterations} passes; between 1 and 4")
    start = time.perf_counter()
    outputs: list[Image.Image] = []
    for prompt in prompts:
        generator = torch.Generator("cpu").manual_seed(int(seed))
        out = pipe(
            prompt=prompt,
            image=source,
            num_inference_steps=None if steps is None else int(steps),
            iterations=int(iterations),
            generator=generator,
            resolution=resolution,
        ).images[0]
        outputs.append(out)
    seconds = time.perf_counter() - start
    shown = source.resize(outputs[0].size, Image.Resampling.LANCZOS)
    scores = (
        [f"{p}: {identity_line(source, o)}" for p, o in zip(prompts, outputs)]
        if measure_identity
        else []
    )
    return EditResult(outputs, grid([shown, *outputs]), scores, seconds)


@dataclass
class FrameRate:
    """Frames per second over the last ``window`` frames."""

    window: int = 20
    _times: deque = field(default_factory=deque)

    def tick(self, now: float | None = None) -> float:
        self._times.append(time.perf_counter() if now is None else now)
        while len(self._times) > self.window:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


def edit_frame(
    pipe: Any, frame: Any, instruction: Any, *, seed: int = 0, resolution: int = LIVE_RESOLUTION
) -> np.ndarray:
    """One webcam frame through the one-step editor, as an ``HxWx3`` uint8 array.

    The noise is seeded the same for every frame, so a still scene gives a still output.
    """
    source = load_image(frame, name="frame")
    prompt = check_prompt(instruction, name="instruction")
    generator = torch.Generator("cpu").manual_seed(int(seed))
    out = pipe(
        prompt=prompt,
        image=source,
        num_inference_steps=1,
        generator=generator,
        resolution=resolution,
    ).images[0]
    return np.asarray(out)
