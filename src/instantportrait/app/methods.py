"""The Generate (FastFace), Group (FPGA) and Restore (DIIR) operations, free of any UI library.

Each takes its model from the registry's lazy slot (see :mod:`.models`) and calls the same
library functions as the matching CLI command; every image passes the input gate
(:func:`instantportrait.io.load_image`) and every prompt :func:`instantportrait.io.check_prompt`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..io import check_prompt, load_image

#: Most identities one Group request may carry (FPGA's multi-ID).
MAX_IDENTITIES = 4


@dataclass(frozen=True)
class MethodResult:
    """One output image and the lines the UI shows beside it."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _generator(seed: Any, device: torch.device) -> torch.Generator:
    kind = device.type if device.type in ("cpu", "cuda") else "cpu"
    return torch.Generator(kind).manual_seed(int(seed))


def _steps(steps: Any, name: str = "steps") -> int:
    if not 1 <= int(steps) <= 100:
        raise InputError(f"{name}: {steps}; between 1 and 100")
    return int(steps)


def generate_fastface(
    model: Any,
    id_image: Any,
    prompt: Any,
    *,
    preset: str = "fastface-am1",
    ip_adapter_scale: float = 0.8,
    seed: int = 0,
    steps: int = 4,
    resolution: int | None = None,
) -> MethodResult:
    """FastFace: one portrait of ``id_image``'s person following ``prompt`` (as
    ``generate --method fastface``). ``model``: a :class:`.models.FastFaceModel`."""
    from ..pipelines.fastface_presets import fastface_preset

    face = load_image(id_image, name="identity photo")
    text = check_prompt(prompt, name="prompt")
    try:
        chosen = fastface_preset(str(preset))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not 0 <= float(ip_adapter_scale) <= 2:
        raise InputError(f"ip_adapter_scale: {ip_adapter_scale}; between 0 and 2")
    if resolution is not None and (int(resolution) < 32 or int(resolution) % 8):
        raise InputError(f"resolution: a multiple of 8, at least 32; got {resolution}")
    start = time.perf_counter()
    pipe = model.pipe
    identity = model.encoder(face, name="identity photo")
    device = pipe.device
    clip = pipe.encode_face_crop(identity.crop.to(device))
    image = pipe(
        text,
        identity.arcface.to(device),
        clip_embeds=clip,
        preset=chosen,
        num_inference_steps=_steps(steps),
        height=resolution,
        width=resolution,
        ip_adapter_scale=float(ip_adapter_scale),
        generator=_generator(seed, device),
    ).images[0]
    seconds = time.perf_counter() - start
    return MethodResult(image, [f"{pipe.family}/{preset}, seed {int(seed)}"], seconds)


def group_condition(
    pose: Any, count: int, masks: list[Any] | None = None, *, size: int | None = None
) -> tuple[Image.Image, np.ndarray | None]:
    """FPGA's condition image and per-identity face masks ``(K, H, W)`` (or ``None``).

    ``pose``: a keypoints JSON file (path or bytes; OpenPose/COCO: its head points give each
    person's face region, identities left to right) or a condition image, which with several
    identities needs one mask per identity (white = face).
    """
    import json
    import os

    from ..conditions import parse_keypoints, render_condition, scale_keypoints
    from ..pipelines.fpga import face_region_masks

    if pose is None:
        raise InputError("pose: upload a keypoints JSON or a pose image")
    data: Any = None
    if isinstance(pose, (bytes, bytearray)):
        raw = bytes(pose)
    elif isinstance(pose, (str, os.PathLike)) and str(pose).lower().endswith(".json"):
        raw = open(pose, "rb").read()  # noqa: SIM115 - small file, read once
    else:
        raw = None
    if raw is not None:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"pose: not a JSON keypoints file ({exc})") from None
    out_masks = None
    if data is not None:
        kps, canvas = parse_keypoints(data, "pose")
        if len(kps) == 0:
            raise InputError("pose: no people in the keypoints")
        cw, ch = canvas or (size or 512, size or 512)
        w, h = (size, size) if size else (cw, ch)
        kps = scale_keypoints(kps, w / cw, h / ch)
        cond = render_condition((w, h), keypoints=kps, mode="skeleton")
        if count > 1 and not masks:
            out_masks = face_region_masks(kps, (w, h), count)
    else:
        cond = load_image(pose, name="pose")
        if size:
            cond = cond.resize((size, size))
        if count > 1 and not masks:
            raise InputError("masks: a pose image has no keypoints; give one mask per identity")
    if masks:
        if len(masks) != count:
            raise InputError(f"masks: {len(masks)} masks for {count} identities")
        out_masks = np.stack(
            [
                np.asarray(
                    load_image(m, name=f"mask {i + 1}").convert("L").resize(cond.size),
                    dtype=np.float32,
                )
                / 255.0
                for i, m in enumerate(masks)
            ]
        )
    return cond, out_masks


def generate_group(
    pipe: Any,
    id_images: list[Any],
    pose: Any,
    prompt: Any,
    *,
    masks: list[Any] | None = None,
    seed: int = 0,
    steps: int = 30,
    guidance_scale: float = 5.0,
    id_scale: float = 1.0,
    size: int | None = None,
) -> MethodResult:
    """FPGA: one image of 1–4 identities in a pose (as ``generate --method fpga``)."""
    faces = [load_image(f, name=f"identity {i + 1}") for i, f in enumerate(id_images or [])]
    if not 1 <= len(faces) <= MAX_IDENTITIES:
        raise InputError(f"identities: {len(faces)}; give 1 to {MAX_IDENTITIES} photos")
    text = check_prompt(prompt, name="prompt")
    if size is not None and (int(size) < 8 or int(size) % 8):
        raise InputError(f"size: a positive multiple of 8, got {size}")
    cond, id_masks = group_condition(pose, len(faces), masks, size=size)
    start = time.perf_counter()
    embeds = pipe.encode_identity(faces, [f"identity {i + 1}" for i in range(len(faces))])
    image = pipe(
        text,
        cond,
        id_embeds=embeds,
        id_masks=id_masks,
        num_inference_steps=_steps(steps),
        guidance_scale=float(guidance_scale),
        id_scale=float(id_scale),
        generator=_generator(seed, pipe.device),
    ).images[0]
    notes = [f"{len(faces)} identit{'y' if len(faces) == 1 else 'ies'}, seed {int(seed)}"]
    return MethodResult(image, notes, time.perf_counter() - start)


def restore_faces(
    restorer: Any,
    image: Any,
    id_image: Any = None,
    *,
    restore_below: float = 100,
    steps: int | None = None,
    prompt: Any = None,
) -> MethodResult:
    """DIIR: every face smaller than ``restore_below`` pixels restored and pasted back (as
    ``instantportrait restore``); a face-free image comes back unchanged with a note."""
    img = load_image(image, name="image")
    face = load_image(id_image, name="identity photo") if id_image is not None else None
    if float(restore_below) <= 0:
        raise InputError(f"restore_below: must be positive, got {restore_below}")
    text = check_prompt(prompt, name="prompt") if prompt else None
    restorer = copy.copy(restorer)  # this request's settings; the shared one is untouched
    restorer.restore_below = float(restore_below)
    if steps is not None:
        restorer.num_inference_steps = _steps(steps)
    start = time.perf_counter()
    result = restorer.restore(img, face, prompt=text, name="image")
    notes = list(result.notes) or [f"{len(result.faces)} face(s) restored"]
    return MethodResult(result.image, notes, time.perf_counter() - start)
