"""Validation edits during training: a grid PNG with each edit's identity distance.

The measure is dlib's: the Euclidean distance of the 128-D face descriptors of input and edit,
which dlib's authors calibrated so that below 0.6 means the same person (99.38% on LFW). A
cosine similarity has no readable scale (0.82 for pure noise, 0.88 for two different people
with dlib's descriptors); the distance and its verdict do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io import ResolutionPolicy, load_image
from ..writer import save_image

#: dlib's same-person threshold on the Euclidean descriptor distance
DLIB_SAME_PERSON = 0.6


def identity_distance(embedder, before: Image.Image, after: Image.Image, landmarks) -> float | None:
    """dlib descriptor distance of the face at ``landmarks`` in two images, or None.

    ``embedder``'s raw output (``forward``, not the L2-normalised ``embed``) is compared, as
    dlib does; below :data:`DLIB_SAME_PERSON` (0.6) the two faces are the same person.
    """
    if embedder is None or landmarks is None:
        return None
    from ..faces.align import crop_faces

    device = next(embedder.parameters()).device
    x = torch.stack(
        [
            torch.from_numpy(np.asarray(im.resize(before.size), dtype=np.float32) / 255.0).permute(
                2, 0, 1
            )
            for im in (before, after)
        ]
    ).to(device)
    lm = torch.as_tensor(np.asarray(landmarks), dtype=torch.float32, device=device)
    lm = lm.unsqueeze(0).expand(2, -1, -1) if lm.ndim == 2 else lm
    with torch.no_grad():
        e = embedder(crop_faces(x, lm, embedder.template, embedder.input_size)).float()
    return float((e[0] - e[1]).norm())


def verdict(distance: float) -> str:
    """``same person`` below dlib's 0.6 threshold, else ``different person``."""
    return "same person" if distance < DLIB_SAME_PERSON else "different person"


def contact_grid(
    rows: Sequence[tuple[Image.Image, Image.Image, str]], cell: int = 192
) -> Image.Image:
    """Rows of (input, output, caption) as one image, captions under each pair."""
    pad, text_h = 4, 16
    grid = Image.new("RGB", (2 * cell + 3 * pad, len(rows) * (cell + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for r, (a, b, caption) in enumerate(rows):
        y = pad + r * (cell + text_h + pad)
        for c, im in enumerate((a, b)):
            thumb = im.copy()
            thumb.thumbnail((cell, cell))
            grid.paste(thumb, (pad + c * (cell + pad), y))
        draw.text((pad, y + cell + 2), caption[:60], fill="black")
    return grid


def validation_items(v, source) -> list[tuple[Any, str]]:
    """The fixed validation set: ``v.images`` with ``v.prompts``, else the first pairs."""
    if v.images:
        prompts = v.prompts or ["wearing a hat"]
        return [(img, prompts[i % len(prompts)]) for i, img in enumerate(v.images)]
    items = []
    for i in range(min(v.count, len(source))):
        ex = source[i]
        items.append(
            (ex.input_bytes, v.prompts[i % len(v.prompts)] if v.prompts else ex.instruction)
        )
    return items


def run_validation(
    pipe,
    items: Sequence[tuple[Any, str]],
    path: str | os.PathLike,
    embedder=None,
    steps: int = 20,
    guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    resolution: int = 256,
    seed: int = 0,
    record: bool = True,
) -> dict[str, float]:
    """Edit each (image, prompt), save the grid at ``path``.

    ``record=False`` only runs the edits (a process holding a shard of the model must join
    every forward pass; the main process records) and returns ``{}``.

    Returns ``val_id_distance`` (mean dlib distance input -> edit over the faces found) and
    ``val_same_person`` (the fraction below 0.6); each caption shows the distance and verdict.
    """
    from ..data.dataset import detect_landmarks5

    policy = ResolutionPolicy(resolution)
    find = None
    if embedder is not None:
        try:
            find = detect_landmarks5()
        except ImportError:
            find = None
    rows, dists = [], []
    for i, (src, prompt) in enumerate(items):
        image = policy.apply(load_image(src, name=f"validation[{i}]"))
        out = pipe(
            prompt,
            image,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            resolution=resolution,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        if not record:
            continue
        dist = identity_distance(embedder, image, out, find(image) if find else None)
        if dist is not None:
            dists.append(dist)
        label = "no face" if dist is None else f"dlib dist {dist:.2f} ({verdict(dist)})"
        rows.append((image, out, f"{label} | {prompt}"))
    if not record:
        return {}
    save_image(contact_grid(rows), Path(path))
    if not dists:
        return {}
    return {
        "val_id_distance": float(np.mean(dists)),
        "val_same_person": float(np.mean([d < DLIB_SAME_PERSON for d in dists])),
    }
