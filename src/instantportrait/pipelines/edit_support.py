"""Pieces of the edit pipeline that are not the pipeline: its output type, image <-> tensor
conversions, the placement record, the safety-checker policy and the log filters."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image


class InstantPortraitPipelineOutput(BaseOutput):
    """``images``: PIL list, ``(B, H, W, 3)`` numpy in [0, 1], ``(B, 3, H, W)`` tensor in [0, 1],
    or latents (``output_type="latent"``)."""

    images: Any


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a ``(1, 3, H, W)`` float tensor in [-1, 1] (the VAE's range)."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_images(images: torch.Tensor, output_type: str) -> Any:
    """Decoded ``[-1, 1]`` images to the requested output type.

    PIL images are quantised on the tensor's device (``round(255 * (x/2 + 1/2))``, clamped)
    and copied to the host as bytes: four times less to copy, and a few small operations
    instead of numpy's float round trip.
    """
    if output_type == "pil":
        x = images.float().add(1.0).mul_(127.5).clamp_(0, 255).round_().to(torch.uint8)
        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _split_images(image: Any) -> list[Any]:
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        return list(image)
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image)
    if isinstance(image, (list, tuple)):
        return list(image)
    return [image]


class _Placement(NamedTuple):
    """Where the pipeline computes: execution device, UNet dtype, VAE device and dtype."""

    device: torch.device
    unet_dtype: torch.dtype
    vae_device: torch.device
    vae_dtype: torch.dtype


def _first_parameter(module: Any) -> torch.Tensor | None:
    if not isinstance(module, torch.nn.Module):
        return None
    return next(module.parameters(), None)


#: Components an InstructPix2Pix checkpoint may list that this pipeline does not load.
NOT_LOADED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")

SAFETY_CHECKER_POLICY = (
    "InstantPortrait does not run the Stable Diffusion safety checker: {name} lists one, and "
    "it is neither loaded nor run (see docs/editing.md, 'Safety checker'); screen outputs "
    "yourself where your use needs it"
)


def _listed_components(path: Path) -> list[str]:
    """Component names a local ``model_index.json`` lists with a class (not ``[null, null]``)."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [
        k
        for k, v in index.items()
        if isinstance(v, list) and len(v) == 2 and v[0] is not None and v[1] is not None
    ]


class _DropLines(logging.Filter):
    """Drops log records for which ``drop(message)`` is true."""

    def __init__(self, drop: Callable[[str], bool]):
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record.getMessage())


@contextlib.contextmanager
def _dropping(logger_names: Sequence[str], drop: Callable[[str], bool]) -> Iterator[None]:
    """Silence the matching lines of some diffusers loggers for the block."""
    loggers = [logging.getLogger(n) for n in logger_names]
    filt = _DropLines(drop)
    for logger in loggers:
        logger.addFilter(filt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(filt)


def _quiet_about(names: Sequence[str]):
    """Diffusers' "... are not expected ... will be ignored" lines about ``names`` (the policy
    for them is stated once by :meth:`InstantPortraitPipeline.from_pretrained`)."""
    return _dropping(
        ["diffusers.configuration_utils", "diffusers.pipelines.pipeline_utils"],
        lambda text: "not expected" in text and any(n in text for n in names),
    )


def _empty_fp32_notice(text: str) -> bool:
    # diffusers warns on every cast that "modules ... should be kept in float32: []" even
    # when the list is empty; only the empty-list form is dropped.
    return "should be kept in float32: []" in text
