"""edit-video's user-facing checks: --fps, output paths, the note about dropped audio."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from instantportrait.cli import main

av = pytest.importorskip("av")

W, H, N = 32, 32, 2


def write_clip_with_audio(path: Path) -> Path:
    """Two video frames and a short silent AAC (or MP2) track, muxed into an .mkv."""
    vcodec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    acodec = "aac" if "aac" in av.codecs_available else "mp2"
    with av.open(str(path), "w") as container:
        video = container.add_stream(vcodec, rate=Fraction(12))
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = container.add_stream(acodec, rate=44100)
        for i in range(N):
            frame = np.full((H, W, 3), 60 * i, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        samples = np.zeros((1, 4096), np.float32)
        aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        aframe.sample_rate = 44100
        for packet in audio.encode(aframe):
            container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)
    return path


def run(*argv: str) -> int:
    return main(["edit-video", *argv, "--prompt", "wearing a hat", "--device", "cpu"])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip_with_audio(tmp_path_factory.mktemp("clip") / "talk.mkv")


@pytest.mark.parametrize("fps", ["0", "-3", "nan"])
def test_bad_fps_refused_before_loading(fps, clip, tmp_path, capsys):
    rc = run(str(clip), "-o", str(tmp_path / "o.mp4"), "--model", "nowhere", "--fps", fps)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--fps" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_output_below_a_file_is_one_line(clip, tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    rc = run(str(clip), "-o", str(blocker / "o.mp4"), "--model", "nowhere")
    assert rc == 2 and "which is a file" in capsys.readouterr().err


def test_dropped_audio_is_said_and_fps_is_honoured(clip, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    rc = run(str(clip), "-o", str(out), "--model", str(tiny_model_dir), "--fps", "5")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "audio is not copied" in err
    with av.open(str(out)) as container:
        assert not container.streams.audio
        assert float(container.streams.video[0].average_rate) == pytest.approx(5)
