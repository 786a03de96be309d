"""Video / stream mode: the one-step editor applied frame by frame.

The prompt is encoded once (:meth:`~instantportrait.pipelines.InstantPortraitPipeline.
encode_prompt`, then ``prompt_embeds=``), frames go through the pipeline in batches, and every
frame gets the *same* noise tensor (one generator per frame, each seeded with the same seed),
so the output does not flicker from the noise alone. Videos are read and written with PyAV
(extra ``video``); a folder of images works as input and as output.

Decisions:

* Output frames have the input's size: each frame is edited at ``resolution`` (long side) and
  resized back when that differs.
* Output by suffix: ``.mp4``/``.mov``/``.mkv``/``.webm``/``.avi`` write a video (codec
  :data:`DEFAULT_CODECS`, or ``codec=``), anything else a folder of PNG frames. Written through
  a temporary file or folder, renamed when complete.
* A missing codec, an unreadable video or a bad frame is one :class:`InputError` line.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import InputError, optional_import, shorten_line
from .io import IMAGE_SUFFIXES, check_prompt, list_images, load_image
from .writer import atomic_directory, atomic_write, check_output_path

#: Container format of each video suffix.
VIDEO_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
#: Encoders tried in order for each container when no codec is named.
DEFAULT_CODECS = {
    "mp4": ("libx264", "h264", "mpeg4"),
    "mov": ("libx264", "h264", "mpeg4"),
    "matroska": ("libx264", "h264", "ffv1", "mpeg4"),
    "webm": ("libvpx-vp9", "libvpx"),
    "avi": ("mpeg4", "mjpeg"),
}
DEFAULT_FPS = 25.0


def _av() -> Any:
    return optional_import("av", "video", "reading and writing videos")


def _av_errors(av: Any) -> tuple[type[BaseException], ...]:
    return (av.error.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class VideoInfo:
    """A video or frame folder: its frame size, rate and (when known) frame count."""

    path: Path
    is_folder: bool
    width: int
    height: int
    fps: float
    frames: int | None
    audio_streams: int = 0


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video file (by suffix) rather than a frame folder."""
    return Path(path).suffix.lower() in VIDEO_FORMATS


def probe(source: str | os.PathLike) -> VideoInfo:
    """Check that ``source`` (a video file or a folder of frames) is readable; describe it."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = list_images([path])
        first = load_image(files[0])
        return VideoInfo(path, True, first.width, first.height, DEFAULT_FPS, len(files))
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else DEFAULT_FPS
            frame = next(container.decode(stream), None)
            if frame is None:
                raise InputError(f"{path}: video holds no frames")
            n_audio = len(container.streams.audio)
            return VideoInfo(
                path, False, frame.width, frame.height, fps, stream.frames or None, n_audio
            )
    except _av_errors(av) as exc:
        raise InputError(f"{path}: unreadable video ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """An exception's message on one line (FFmpeg's text without the errno)."""
    text = str(getattr(exc, "strerror", None) or exc).strip()
    return shorten_line(text.splitlines()[0]) if text else type(exc).__name__


def read_frames(source: str | os.PathLike) -> Iterator[np.ndarray]:
    """The frames of a video file or folder, in order, as ``(H, W, 3)`` uint8 RGB arrays."""
    path = Path(source)
    if path.is_dir():
        for f in list_images([path]):
            yield np.asarray(load_image(f))
        return
    av = _av()
    index = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
                index += 1
    except _av_errors(av) as exc:
        raise InputError(
            f"{path}: unreadable video at frame {index} ({_first_line(exc)})"
        ) from None


def choose_codec(output: str | os.PathLike, codec: str | None = None) -> str:
    """The encoder for ``output``: ``codec`` if this PyAV build has it, else the first default."""
    av = _av()
    fmt = VIDEO_FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise InputError(f"{output}: not a video suffix ({', '.join(VIDEO_FORMATS)})")

    def has_encoder(name: str) -> bool:
        try:
            av.codec.Codec(name, "w")
        except (ValueError, av.error.FFmpegError):
            return False
        return True

    candidates = (codec,) if codec else DEFAULT_CODECS[fmt]
    for name in candidates:
        if has_encoder(name):
            return name
    have = [c for c in DEFAULT_CODECS[fmt] if has_encoder(c)]
    hint = (
        f"available for {Path(output).suffix}: {', '.join(have)}"
        if have
        else ("this PyAV/FFmpeg build has none of them; write a frame folder instead")
    )
    raise InputError(f"{output}: no encoder for codec {' / '.join(candidates)} ({hint})")


#: Pixel format per encoder (yuv420p, which needs even sizes, for the rest).
PIXEL_FORMATS = {"ffv1": "yuv444p", "mjpeg": "yuvj420p", "png": "rgb24"}


def check_frame_size(output: str | os.PathLike, codec: str, width: int, height: int) -> None:
    """Raise :class:`InputError` when ``codec``'s pixel format cannot hold this frame size."""
    if PIXEL_FORMATS.get(codec, "yuv420p").endswith("420p") and (width % 2 or height % 2):
        raise InputError(
            f"{output}: codec {codec} needs even frame sizes, got {width}x{height}; "
            "write a frame folder, or an .mkv with --codec ffv1"
        )


def check_fps(fps: float | None) -> float | None:
    """``None`` (keep the input's rate) or a finite positive rate; else :class:`InputError`."""
    if fps is None:
        return None
    rate = float(fps)
    if not math.isfinite(rate) or rate <= 0:
        raise InputError(f"fps: must be a positive number of frames per second, got {fps}")
    return rate


def plan_output(
    output: str | os.PathLike,
    info: VideoInfo,
    *,
    codec: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, str | None]:
    """Check the output before any work: path, suffix, encoder, frame size.

    Returns the output path and the encoder (``None`` for a frame folder).
    """
    out = check_output_path(output, kind="file" if is_video_path(output) else "dir")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    if not is_video_path(out):
        if out.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(f"{out}: give a video file ({', '.join(VIDEO_FORMATS)}) or a folder")
        if codec:
            raise InputError(f"--codec {codec}: output {out} is a frame folder, not a video")
        return out, None
    chosen = choose_codec(out, codec)
    check_frame_size(out, chosen, info.width, info.height)
    return out, chosen


class VideoWriter:
    """Encode RGB frames to a video file with PyAV (``write`` each frame, then ``close``)."""

    def __init__(self, path: Path, fmt: str, codec: str, width: int, height: int, fps: float):
        av = _av()
        self._av = av
        self.path = path
        check_frame_size(path, codec, width, height)
        try:
            self.container = av.open(str(path), mode="w", format=fmt)
            rate = Fraction(fps).limit_denominator(100000)
            self.stream = self.container.add_stream(codec, rate=rate)
            self.stream.width, self.stream.height = width, height
            self.stream.pix_fmt = PIXEL_FORMATS.get(codec, "yuv420p")
            if codec == "libx264":
                self.stream.options = {"crf": "18"}
        except _av_errors(av) as exc:
            raise InputError(
                f"{path}: cannot write {fmt} with {codec} ({_first_line(exc)})"
            ) from None

    def write(self, frame: np.ndarray) -> None:
        video_frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)

    def close(self, flush: bool = True) -> None:
        """Flush the encoder (unless ``flush`` is False, after an error) and close the file."""
        try:
            if flush:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()


@dataclass(frozen=True)
class VideoEditResult:
    """What :func:`edit_video` did: frames, their size, wall time and frames per second."""

    output: Path
    frames: int
    width: int
    height: int
    seconds: float
    frames_per_s: float


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def edit_video(
    pipe: Any,
    source: str | os.PathLike,
    output: str | os.PathLike,
    prompt: str,
    *,
    batch_size: int = 4,
    seed: int = 0,
    num_inference_steps: int | None = 1,
    guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    iterations: int = 1,
    resolution: int | None = 512,
    fps: float | None = None,
    codec: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> VideoEditResult:
    """Edit every frame of ``source`` by ``prompt`` and write ``output`` (video or folder).

    Args:
        pipe: an :class:`~instantportrait.pipelines.InstantPortraitPipeline`.
        source: a video file, or a folder of images (frames, sorted by name).
        output: a video file (by suffix, :data:`VIDEO_FORMATS`) or a folder for PNG frames.
        prompt: the instruction, encoded once for the whole video.
        batch_size: frames per pipeline call.
        seed: the noise seed; every frame gets the same noise tensor.
        num_inference_steps: 1 (the one-step editor) by default; ``None``: the checkpoint's.
        guidance_scale / image_guidance_scale / iterations: as the pipeline's.
        resolution: long side frames are edited at (``None``: their own size); the output is
            resized back to the input's frame size.
        fps: output frame rate (default: the input video's, 25 for a frame folder).
        codec: video encoder (default: the first of :data:`DEFAULT_CODECS` available).
        overwrite: replace an existing output.
        progress: a progress bar (frames) on stderr.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise InputError(f"batch_size: at least 1, got {batch_size}")
    rate = check_fps(fps)
    info = probe(source)
    out, chosen = plan_output(output, info, codec=codec, overwrite=overwrite)
    rate = info.fps if rate is None else rate
    if info.audio_streams:
        warnings.warn(
            f"{info.path}: the input's audio is not copied; {out} holds the edited frames only "
            "(mux the sound back with e.g. ffmpeg -i edited -i input -map 0:v -map 1:a -c copy)",
            stacklevel=2,
        )
    names = [f.stem for f in list_images([info.path])] if info.is_folder else None
    if names is not None and len(set(names)) != len(names):
        names = None  # two frames share a stem (a.png, a.jpg): number them instead

    prompt = check_prompt(prompt, pipe.tokenizer, name="prompt")
    cond, uncond = pipe.encode_prompt(prompt)  # once for the whole video
    bar = tqdm(
        total=info.frames,
        desc="editing frames",
        unit="frame",
        disable=not progress,
        file=sys.stderr,
    )
    size = (info.width, info.height)
    count = 0
    start = time.perf_counter()

    def edited(batch: list[np.ndarray]) -> list[Image.Image]:
        for i, frame in enumerate(batch):
            if (frame.shape[1], frame.shape[0]) != size:
                raise InputError(
                    f"{info.path}: frame {count + i} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"the first was {size[0]}x{size[1]}"
                )
        images = pipe(
            image=batch,
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            iterations=iterations,
            generator=[torch.Generator("cpu").manual_seed(int(seed)) for _ in batch],
            output_type="pil",
            resolution=resolution,
        ).images
        return [
            im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im in images
        ]

    def frames_out() -> Iterator[Image.Image]:
        nonlocal count
        for batch in _batches(read_frames(info.path), batch_size):
            yield from edited(batch)
            count += len(batch)
            bar.update(len(batch))

    try:
        if chosen is not None:

            def write_video(tmp: Path) -> None:
                writer = VideoWriter(tmp, VIDEO_FORMATS[out.suffix.lower()], chosen, *size, rate)
                complete = False
                try:
                    for image in frames_out():
                        writer.write(np.asarray(image))
                    complete = True
                finally:
                    writer.close(flush=complete)

            atomic_write(out, write_video)
        else:
            with atomic_directory(out, overwrite=overwrite) as tmp:
                for i, image in enumerate(frames_out()):
                    name = names[i] if names is not None else f"frame_{i:06d}"
                    image.save(tmp / f"{name}.png")
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return VideoEditResult(out, count, size[0], size[1], seconds, count / max(seconds, 1e-9))
