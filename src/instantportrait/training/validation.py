"""Validation edits during training: a grid PNG with each edit's identity similarity."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io import ResolutionPolicy, load_image, save_image


def identity_similarity(
    embedder, before: Image.Image, after: Image.Image, landmarks
) -> float | None:
    """Cosine similarity of the face at ``landmarks`` in two same-size images, or None."""
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
    with torch.no_grad():
        e = embedder.embed(crop_faces(x, lm, embedder.template, embedder.input_size))
    return float(embedder.similarity(e[:1], e[1:])[0])


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
) -> dict[str, float]:
    """Edit each (image, prompt), save the grid at ``path``; returns the mean similarity."""
    from .editing import face_landmark_detector

    policy = ResolutionPolicy(resolution)
    find = None
    if embedder is not None:
        try:
            find = face_landmark_detector()
        except ImportError:
            find = None
    rows, sims = [], []
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
        sim = identity_similarity(embedder, image, out, find(image) if find else None)
        if sim is not None:
            sims.append(sim)
        label = "no face" if sim is None else f"id sim {sim:.3f}"
        rows.append((image, out, f"{prompt} | {label}"))
    save_image(contact_grid(rows), Path(path))
    return {"val_identity": float(np.mean(sims))} if sims else {}
