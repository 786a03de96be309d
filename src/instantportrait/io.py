"""The one gate for untrusted input (images, prompts); the writer policy is re-exported here.

Every image that enters the toolkit passes :func:`load_image`; every prompt passes
:func:`check_prompt`. A rejected input raises :class:`~instantportrait.errors.InputError`
whose message is one line naming the input. Every file the toolkit writes goes through the
writer policy (:mod:`instantportrait.writer`: :func:`check_output`, :func:`prepare_output`,
:func:`atomic_write`, :func:`atomic_directory`, :func:`save_image`...), whose names this
module re-exports so ``from instantportrait.io import ...`` keeps working.

Decisions, written down:

* Images become 8-bit RGB. Alpha is composited over white; 16-bit and 32-bit integer images
  are scaled to 8 bits (``value / 257`` for 16-bit); float arrays and tensors are read as
  ``[0, 1]``. EXIF orientation is applied. Animated images use their first frame and warn.
* The pixel count is checked from the header, *before* any pixel is decoded, against
  ``max_pixels`` (default 64 megapixels, ``INSTANTPORTRAIT_MAX_PIXELS`` overrides), so a
  decompression bomb costs nothing.
* The resolution policy keeps the aspect ratio, scales the long side to ``long_side``
  (default 512; up or down) and rounds both sides to a multiple of 8 (at least 8).
* A prompt longer than the text encoder reads is truncated by the tokenizer, with a warning
  that says how many tokens were dropped; an empty prompt is an error.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .writer import (  # noqa: F401 - re-exported: callers import the writer policy from io
    atomic_directory,
    atomic_write,
    atomic_write_bytes,
    check_output,
    check_output_path,
    normalise_modes,
    prepare_output,
    safe_output_path,
    save_image,
)

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray | torch.Tensor

DEFAULT_MAX_PIXELS = int(os.environ.get("INSTANTPORTRAIT_MAX_PIXELS", 64 * 1024 * 1024))
#: The largest side the model may be asked to work at (``--resolution``, ``height``/``width``):
#: refused up front, before any memory is spent (a 100000-pixel side would be killed by the
#: out-of-memory killer instead). ``INSTANTPORTRAIT_MAX_RESOLUTION`` overrides it.
MAX_RESOLUTION = int(os.environ.get("INSTANTPORTRAIT_MAX_RESOLUTION", 4096))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def describe_source(source: Any, name: str | None = None) -> str:
    """A short human name for an input, used in every error message about it."""
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height} {source.mode}>"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<{type(source).__name__} {tuple(source.shape)}>"
    return f"<{type(source).__name__}>"


def _check_size(width: int, height: int, max_pixels: int, label: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{label}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"{label}: image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (set INSTANTPORTRAIT_MAX_PIXELS or max_pixels= to raise it)"
        )


def _open_encoded(data: io.BytesIO | str | os.PathLike, label: str, max_pixels: int) -> Image.Image:
    """Open an encoded image, checking its header before decoding any pixel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            # PIL's own bomb guard fires at open for huge headers; we report our own line.
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(data)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        except UnidentifiedImageError:
            raise InputError(f"{label}: not an image (unrecognised format)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{label}: unreadable image ({exc})") from None
    _check_size(img.width, img.height, max_pixels, label)
    n_frames = getattr(img, "n_frames", 1)
    if n_frames > 1:
        warnings.warn(
            f"{label}: animated image with {n_frames} frames; using the first", stacklevel=3
        )
        img.seek(0)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{label}: truncated or corrupt image ({exc})") from None
    return img


def _array_to_uint8(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{label}: image contains NaN or infinite values")
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.itemsize >= 2 and arr.max(initial=0) > 255:
            # 16-bit data (also 16-bit values carried in a 32-bit "I" image).
            return (np.clip(arr.astype(np.float64), 0, 65535) / 257.0 + 0.5).astype(np.uint8)
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise InputError(f"{label}: unsupported pixel type {arr.dtype}")


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing alpha over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite_on_white(img)
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img)
        if mode == "F":
            top = float(arr.max(initial=0.0))
            arr = arr / 255.0 if top > 1.0 else arr
        gray = _array_to_uint8(arr, label)
        return Image.fromarray(gray, mode="L").convert("RGB")
    try:
        return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"{label}: cannot convert image mode {mode} to RGB ({exc})") from None


def _from_array(arr: np.ndarray, label: str, channels_first: bool) -> Image.Image:
    if arr.ndim == 3 and channels_first:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InputError(
            f"{label}: expected an HxW, HxWx3 or HxWx4 image (CxHxW for tensors), "
            f"got shape {tuple(arr.shape)}"
        )
    _check_size(arr.shape[1], arr.shape[0], DEFAULT_MAX_PIXELS * 4, label)
    arr8 = _array_to_uint8(np.ascontiguousarray(arr), label)
    if arr8.ndim == 2:
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if arr8.shape[-1] == 4:
        return _composite_on_white(Image.fromarray(arr8, mode="RGBA"))
    return Image.fromarray(arr8, mode="RGB")


def load_image(
    source: ImageSource, *, name: str | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Load one untrusted image as 8-bit RGB, or raise :class:`InputError` with one line.

    Args:
        source: a path, encoded bytes, a PIL image, a numpy array (HxW, HxWx3, HxWx4; uint8,
            uint16 or float in [0, 1]) or a tensor (CxHxW or HxW; uint8 or float in [0, 1]).
        name: how to call the input in messages (default: derived from ``source``).
        max_pixels: the largest accepted width x height (default :data:`DEFAULT_MAX_PIXELS`).
    """
    label = describe_source(source, name)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{label}: no such file")
        if not path.is_file():
            raise InputError(f"{label}: not a file")
        if path.stat().st_size == 0:
            raise InputError(f"{label}: empty file (0 bytes)")
        img = _open_encoded(path, label, limit)
    elif isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise InputError(f"{label}: empty input (0 bytes)")
        img = _open_encoded(io.BytesIO(bytes(source)), label, limit)
    elif isinstance(source, Image.Image):
        _check_size(source.width, source.height, limit, label)
        img = source
    elif isinstance(source, np.ndarray):
        return _from_array(source, label, channels_first=False)
    elif isinstance(source, torch.Tensor):
        arr = source.detach().to("cpu")
        if arr.is_floating_point():
            arr = arr.float()
        return _from_array(arr.numpy(), label, channels_first=arr.ndim == 3)
    else:
        raise InputError(
            f"{label}: not an image source (expected a path, bytes, PIL, numpy or tensor)"
        )
    # A broken EXIF block does not make the pixels unusable.
    with contextlib.suppress(OSError, ValueError, SyntaxError, TypeError):
        img = ImageOps.exif_transpose(img)
    return _to_rgb(img, label)


@dataclass(frozen=True)
class ResolutionPolicy:
    """How an input image is sized for the model: keep aspect, long side, multiple of 8.

    Args:
        long_side: the long side after resizing (default 512); ``None`` keeps the input's
            size, only rounding it to ``multiple``.
        multiple: both sides are rounded to a multiple of this (default 8: the VAE's factor).
    """

    long_side: int | None = 512
    multiple: int = 8

    def __post_init__(self) -> None:
        if self.long_side is not None and self.long_side < self.multiple:
            raise InputError(f"resolution: long side {self.long_side} is below {self.multiple}")
        if self.long_side is not None and self.long_side > MAX_RESOLUTION:
            raise InputError(
                f"resolution: long side {self.long_side} is above the limit of {MAX_RESOLUTION} "
                "(INSTANTPORTRAIT_MAX_RESOLUTION raises it)"
            )
        if self.multiple < 1:
            raise InputError(f"resolution: multiple must be positive, got {self.multiple}")

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the model sees for an input of this size."""
        scale = 1.0 if self.long_side is None else self.long_side / max(width, height)
        m = self.multiple

        def snap(side: float) -> int:
            return max(m, int(round(side * scale / m)) * m)

        size = snap(width), snap(height)
        if max(size) > MAX_RESOLUTION:
            raise InputError(
                f"resolution: a {width}x{height} input would be edited at {size[0]}x{size[1]}, "
                f"above the limit of {MAX_RESOLUTION} per side (give a resolution, or set "
                "INSTANTPORTRAIT_MAX_RESOLUTION)"
            )
        return size

    def apply(self, image: Image.Image) -> Image.Image:
        """Resize ``image`` to :meth:`target_size` (Lanczos); unchanged if already there."""
        size = self.target_size(*image.size)
        if size == image.size:
            return image
        return image.resize(size, Image.Resampling.LANCZOS)


def restore_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize a result back to the input's original (width, height) (``--keep-size``)."""
    if image.size == tuple(size):
        return image
    return image.resize(tuple(size), Image.Resampling.LANCZOS)


def check_prompt(prompt: Any, tokenizer: Any | None = None, *, name: str = "prompt") -> str:
    """Validate one prompt; warn with the count of dropped tokens when it is too long.

    Args:
        prompt: the text. Must be a non-empty string once whitespace is stripped.
        tokenizer: a CLIP-style tokenizer; when given, prompts longer than
            ``model_max_length - 2`` tokens (the start/end tokens excluded) are reported.
        name: how to call the prompt in messages.
    """
    if not isinstance(prompt, str):
        raise InputError(f"{name}: expected text, got {type(prompt).__name__}")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in prompt).split())
    if not text:
        raise InputError(f"{name}: empty prompt")
    if tokenizer is not None:
        limit = int(getattr(tokenizer, "model_max_length", 77)) - 2
        n_tokens = len(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)
        if n_tokens > limit:
            warnings.warn(
                f"{name}: {n_tokens} tokens, the text encoder reads {limit}; "
                f"{n_tokens - limit} tokens dropped from the end",
                stacklevel=2,
            )
    return text


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file: one a line; blank lines and lines starting with '#' skipped."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: prompt file not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{p}: prompt file is not UTF-8 text") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"{p}: prompt file has no prompts")
    return [check_prompt(t, name=f"{p}:{i + 1}") for i, t in enumerate(prompts)]


def list_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand paths and folders (one level; sorted) into image files; missing paths raise."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file")
    return files
