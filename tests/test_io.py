"""The input gate: every bad image gives one clear line, every odd mode becomes RGB."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.errors import InputError
from instantportrait.io import (
    ResolutionPolicy,
    check_prompt,
    list_images,
    load_image,
    read_prompt_file,
    restore_size,
)
from instantportrait.writer import atomic_directory, atomic_write, safe_output_path, save_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but that holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def one_line_error(source, match: str, **kw) -> str:
    with pytest.raises(InputError, match=match) as info:
        load_image(source, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert str(p) in one_line_error(p, "empty file")


def test_truncated_jpeg(tmp_path, astronaut_path):
    data = encode(Image.open(astronaut_path).convert("RGB"), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    assert str(p) in one_line_error(p, "truncated or corrupt")


def test_text_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("definitely not pixels\n")
    one_line_error(p, "not an image")


def test_header_bomb_rejected_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(50000, 50000))
    msg = one_line_error(p, "above the limit")
    assert "50000x50000" in msg


def test_pixel_limit_is_configurable(astronaut_path):
    one_line_error(astronaut_path, "above the limit", max_pixels=100 * 100)
    assert load_image(astronaut_path, max_pixels=512 * 512).size == (512, 512)


def test_missing_file_and_wrong_type(tmp_path):
    one_line_error(tmp_path / "nope.png", "no such file")
    one_line_error(tmp_path, "not a file")
    one_line_error(12345, "not an image source")
    one_line_error(b"", "empty input")


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan ink
    img = load_image(encode(cmyk, "JPEG", quality=95))
    assert img.mode == "RGB"
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert r < 30 and g > 220 and b > 220


def test_16bit_png_scaled_to_8bit():
    arr = np.full((16, 16), 40000, dtype=np.uint16)
    img = load_image(encode(Image.fromarray(arr), "PNG"))
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img).astype(int) - round(40000 / 257)).max() <= 1


def test_rgba_png_composited_over_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    px = np.asarray(load_image(encode(rgba, "PNG")))[0, 0].astype(int)
    expected = np.array([255, round(255 * (1 - 128 / 255)), round(255 * (1 - 128 / 255))])
    assert np.abs(px - expected).max() <= 1


def test_palette_with_transparency_and_la():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert np.asarray(load_image(encode(p, "PNG", transparency=0))).min() == 255
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(load_image(la)).min() == 255


def test_exif_rotated_jpeg():
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img = np.asarray(load_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95)))
    assert img.shape == (40, 20, 3)
    assert img[5, 10, 0] > 200 and img[5, 10, 2] < 60  # top is red
    assert img[35, 10, 2] > 200 and img[35, 10, 0] < 60  # bottom is blue


def test_animated_gif_uses_first_frame_and_says_so():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="2 frames"):
        img = load_image(buf.getvalue())
    assert tuple(np.asarray(img)[0, 0]) == (255, 0, 0)


def test_numpy_and_tensor_inputs():
    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    img = np.asarray(load_image(ramp))
    assert img.shape == (4, 4, 3) and img[0, 0, 0] == 0 and img[-1, -1, 0] == 255
    t = torch.zeros(3, 5, 7)
    t[0] = 1.0
    out = np.asarray(load_image(t))
    assert out.shape == (5, 7, 3) and (out[..., 0] == 255).all() and (out[..., 1] == 0).all()
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, dtype=np.float32))
    with pytest.raises(InputError, match="expected an HxW"):
        load_image(np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(InputError, match="zero size"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((512, 512), (512, 512)),
        ((1024, 576), (512, 288)),
        ((37, 150), (128, 512)),
        ((100, 400), (128, 512)),
        ((3, 3), (512, 512)),
    ],
)
def test_resolution_policy(size, expected):
    assert ResolutionPolicy(512).target_size(*size) == expected


def test_resolution_policy_keep_size_and_aspect():
    policy = ResolutionPolicy(long_side=None)
    assert policy.target_size(37, 150) == (40, 152)
    w, h = ResolutionPolicy(256).target_size(1000, 4000)  # 1:4
    assert (w, h) == (64, 256) and w % 8 == 0
    img = Image.new("RGB", (37, 150))
    out = ResolutionPolicy(64).apply(img)
    assert out.size == (16, 64)
    assert restore_size(out, img.size).size == (37, 150)
    with pytest.raises(InputError):
        ResolutionPolicy(long_side=4)


def test_prompt_gate(tiny_components):
    tok = tiny_components["tokenizer"]
    with pytest.raises(InputError, match="empty prompt"):
        check_prompt("   \n\t ")
    with pytest.raises(InputError, match="expected text"):
        check_prompt(None)
    assert check_prompt("  wearing\x00 a   hat ") == "wearing a hat"
    long = " ".join(["portrait"] * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_prompt(long, tok)
    assert any("25 tokens dropped" in str(w.message) for w in caught)


def test_prompt_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("# style prompts\nwearing a hat\n\n  as a watercolour painting  \n")
    assert read_prompt_file(p) == ["wearing a hat", "as a watercolour painting"]
    (tmp_path / "blank.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="no prompts"):
        read_prompt_file(tmp_path / "blank.txt")


def test_output_paths_stay_inside_and_do_not_overwrite(tmp_path):
    out = tmp_path / "out"
    assert safe_output_path(out, "../../etc/passwd").parent == out.resolve()
    assert safe_output_path(out, "/abs/x.png") == (out / "x.png").resolve()
    with pytest.raises(InputError):
        safe_output_path(out, "..")
    out.mkdir()
    (out / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="already exists"):
        safe_output_path(out, "a.png")
    assert safe_output_path(out, "a.png", overwrite=True).name == "a.png"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def boom(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f.bin", boom)
    assert list(tmp_path.iterdir()) == []
    save_image(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "ok.png")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]
    assert np.asarray(Image.open(tmp_path / "ok.png"))[0, 0].tolist() == [1, 2, 3]


def test_atomic_directory(tmp_path):
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_directory(dest) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(dest) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(InputError), atomic_directory(dest):
        pass
    with atomic_directory(dest, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_list_images(tmp_path):
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images([tmp_path])] == ["a.jpg", "b.png"]
    with pytest.raises(InputError, match="no such file"):
        list_images([tmp_path / "missing.png"])
