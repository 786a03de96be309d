"""Video / stream mode: edit-video on synthetic clips made here with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantportrait.cli import main
from instantportrait.records import read_records

av = pytest.importorskip("av")

N_FRAMES, W, H = 6, 64, 48


def synthetic_frames(n: int = N_FRAMES) -> list[np.ndarray]:
    """A moving bar on a colour ramp: every frame different."""
    frames = []
    for i in range(n):
        arr = np.zeros((H, W, 3), np.uint8)
        arr[..., 0] = 40 * i
        arr[..., 2] = np.linspace(0, 255, W, dtype=np.uint8)
        arr[:, 8 * i : 8 * i + 8, 1] = 255
        frames.append(arr)
    return frames


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 12) -> Path:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_clip(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "in.mp4", synthetic_frames())


def edit_video(*argv: str) -> int:
    return main(["edit-video", *argv, "--prompt", "wearing a hat", "--device", "cpu"])


def test_video_in_video_out_keeps_count_size_and_rate(clip, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = edit_video(
        str(clip),
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--batch-size",
        "4",
        "--resolution",
        "64",
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert f"{N_FRAMES} frames {W}x{H}" in captured.err and "frames/s" in captured.err
    frames, fps = read_clip(out)
    assert len(frames) == N_FRAMES and frames[0].shape == (H, W, 3) and fps == 12.0
    assert not list(tmp_path.glob(".out.mp4.*"))  # atomic: no temporary left
    record = read_records(tmp_path)["out.mp4"]  # the video's record, in its folder
    assert (record["frames"], record["width"], record["prompt"]) == (N_FRAMES, W, "wearing a hat")


def test_frame_folders_and_the_same_noise_for_every_frame(tiny_model_dir, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    frames = synthetic_frames(5)
    frames[3] = frames[0]  # a repeated frame, in another batch, must edit identically
    for i, arr in enumerate(frames):
        Image.fromarray(arr).save(src / f"f{i:02d}.png")
    out = tmp_path / "edited"
    rc = edit_video(
        str(src),
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--batch-size",
        "2",
        "--resolution",
        "64",
    )
    assert rc == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"f{i:02d}.png" for i in range(5)]
    records = read_records(out)  # each frame its record: the prompt, the one seed, its size
    assert list(records) == names
    assert {(r["command"], r["seed"], r["width"], r["height"]) for r in records.values()} == {
        ("edit-video", 0, W, H)
    }
    edited = [np.asarray(Image.open(out / n)) for n in names]
    assert all(e.shape == (H, W, 3) for e in edited)
    assert np.array_equal(edited[0], edited[3])  # same input, same noise: same output
    assert not np.array_equal(edited[0], edited[1])


def test_prompt_encoded_once_and_frames_batched(clip, tiny_pipe, tmp_path):
    from instantportrait.video import edit_video as edit

    text_rows, unet_batches = [], []
    h1 = tiny_pipe.text_encoder.register_forward_hook(
        lambda m, i, o: text_rows.append(i[0].shape[0])
    )
    h2 = tiny_pipe.unet.register_forward_hook(lambda m, i, o: unet_batches.append(i[0].shape[0]))
    try:
        result = edit(
            tiny_pipe,
            clip,
            tmp_path / "o",
            "wearing a hat",
            batch_size=4,
            guidance_scale=1.0,
            image_guidance_scale=1.0,
            resolution=64,
            progress=False,
        )
    finally:
        h1.remove()
        h2.remove()
    assert text_rows == [2]  # prompt + empty prompt, once for the whole video
    assert unet_batches == [4, 2] and result.frames == N_FRAMES and result.frames_per_s > 0


def test_bad_video_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    out = tmp_path / "out.mp4"
    assert edit_video(str(bad), "-o", str(out), "--model", str(tiny_model_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.mp4: unreadable video" in err
    assert not out.exists()


def test_missing_codec_and_existing_output_are_one_line(clip, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out.mp4"
    assert (
        edit_video(
            str(clip), "-o", str(out), "--model", str(tiny_model_dir), "--codec", "no-such-codec"
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no encoder for codec no-such-codec" in err
    out.write_bytes(b"keep me")
    assert edit_video(str(clip), "-o", str(out), "--model", str(tiny_model_dir)) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
