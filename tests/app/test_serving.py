"""The request plumbing: one log line per refused or failed request, no paths; the caller;
uploads removed only from Gradio's upload folder."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

from instantportrait.app.serving import answers, discard_uploads, owner_of, scrub  # noqa: E402
from instantportrait.errors import InputError  # noqa: E402


def test_scrub_replaces_absolute_paths_only():
    text = "--images[0] /tmp/a b/faceanet/x/photos/0.png: no face; see C:\\data\\f.png and 1/2"
    assert scrub(text) == "--images[0] <file> no face; see <file> and 1/2"
    assert scrub("photo 2:\n  no face") == "photo 2: no face"


def test_refused_and_failed_requests_are_one_line_each(caplog):
    @answers
    def edit():
        raise InputError("portrait: /srv/uploads/abc/me.png is not an image")

    @answers
    def restore():
        raise RuntimeError("CUDA out of memory in /home/op/models/unet.safetensors\nat line 3")

    with caplog.at_level(logging.INFO, logger="instantportrait.app"):
        with pytest.raises(gr.Error) as refused:
            edit()
        with pytest.raises(gr.Error) as failed:
            restore()
    assert refused.value.message == "portrait: <file> is not an image"
    assert "internal error (RuntimeError)" in failed.value.message
    assert "/home" not in failed.value.message
    assert not refused.value.print_exception and not failed.value.print_exception
    records = [r for r in caplog.records if r.name == "instantportrait.app"]
    lines = [(r.levelname, r.getMessage()) for r in records]
    assert lines == [
        ("WARNING", "refused /edit: portrait: <file> is not an image"),
        ("ERROR", "failed /restore: RuntimeError: CUDA out of memory in <file> at line 3"),
    ]
    assert all(r.exc_info is None for r in records)


def test_owner_is_the_user_when_signed_in_else_the_session():
    assert owner_of(SimpleNamespace(username="alice", session_hash="s1")) == "user:alice"
    assert owner_of(SimpleNamespace(username=None, session_hash="s1")) == "session:s1"
    with pytest.raises(InputError):
        owner_of(SimpleNamespace(username=None, session_hash=None))


def test_discard_uploads_touches_only_the_upload_folder(tmp_path):
    uploads, elsewhere = tmp_path / "gradio", tmp_path / "mine"
    (uploads / "hash1").mkdir(parents=True)
    elsewhere.mkdir()
    inside, outside = uploads / "hash1" / "face.png", elsewhere / "face.png"
    inside.write_bytes(b"x")
    outside.write_bytes(b"x")
    discard_uploads([{"path": str(inside)}, {"path": str(outside)}, None], uploads)
    assert not inside.exists() and not (uploads / "hash1").exists() and outside.exists()
