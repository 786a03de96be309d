"""``instantportrait app`` at start: exposure without sign-in, a taken port, the auth file
command, and what reaches ``launch`` (sign-in, upload limit, retention checked at start)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time

import pytest

from instantportrait.cli import main


@pytest.fixture(autouse=True)
def app_logger_restored():
    """``app`` sets up its log handler; later tests get the logger as it was."""
    import logging

    logger = logging.getLogger("instantportrait.app")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_non_loopback_host_without_sign_in_is_refused(capsys):
    assert main(["app", "--host", "0.0.0.0"]) == 2
    err = one_line_error(capsys)
    assert "0.0.0.0" in err and "--auth" in err and "--public-without-auth" in err


def test_a_port_in_use_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    err = one_line_error(capsys)
    assert f"--port {port}" in err and "another --port" in err


def test_add_user_writes_a_hash_that_signs_in(tmp_path, monkeypatch, capsys):
    from instantportrait.app.access import Credentials, read_auth_file

    users = tmp_path / "users.txt"
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert main(["app", "--auth-file", str(users), "--add-user", "alice"]) == 0
    assert "correct horse" not in users.read_text()
    check = Credentials(read_auth_file(users))
    assert check("alice", "correct horse") and not check("alice", "correct horse\n")
    assert main(["app", "--add-user", "bob"]) == 2  # which file?
    assert "--auth-file" in one_line_error(capsys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


class FakeDemo:
    launched: dict = {}

    def launch(self, **kwargs):
        FakeDemo.launched = kwargs


def test_start_passes_sign_in_and_limits_and_sweeps_aged_identities(tmp_path, monkeypatch, capsys):
    import instantportrait.app as app
    from instantportrait.app.identities import IdentityStore

    store = IdentityStore(tmp_path / "work" / "faceanet")
    old, folder = store.create("user:alice")
    (folder / "identity.json").write_text(json.dumps({"created": time.time() - 7200}))
    store.release(folder)
    monkeypatch.setattr(app, "build_app", lambda registry, **kw: FakeDemo())
    argv = ["app", "--host", "0.0.0.0", "--auth", "alice:pw", "--retention", "1",
            "--sign-in-failures", "2", "--sign-in-lockout", "1",
            "--workdir", str(tmp_path / "work"), "--max-upload-mb", "2", "--port", "0"]  # fmt: skip
    assert main(argv) == 2  # port 0 is refused before anything starts
    argv[-1] = port = str(free_port())
    assert main(argv) == 0
    launched = FakeDemo.launched

    def auth(name, password):  # Gradio awaits the coroutine auth
        return asyncio.run(launched["auth"](name, password))

    assert auth("alice", "pw") and not auth("alice", "nope")
    assert launched["max_file_size"] == 2_000_000 and launched["server_name"] == "0.0.0.0"
    assert not auth("alice", "nope")  # the 2nd failure: alice is paused
    with pytest.raises(Exception) as paused:  # noqa: B017 - FastAPI's HTTPException
        auth("alice", "pw")
    assert paused.value.status_code == 400 and paused.value.headers["Retry-After"] == "60"
    assert launched["app_kwargs"]["middleware"]  # the client address reaches the limit
    assert not folder.exists()  # retention ran at start
    out = capsys.readouterr().out
    assert "sign-in: 1 user(s); after 2 failed sign-ins" in out and "pauses for 1 minute " in out
    assert "deleted after 1 h" in out
    argv = ["app", "--host", "0.0.0.0", "--public-without-auth", "--port", port,
            "--workdir", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0 and FakeDemo.launched["auth"] is None
    assert "--public-without-auth: serving 0.0.0.0 with no sign-in" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [("--sign-in-failures", "0", "sign-in failures: at least 1"),
     ("--sign-in-failures-per-address", "-1", "sign-in failures per address"),
     ("--sign-in-window", "0", "sign-in window: must be positive"),
     ("--sign-in-lockout", "-2", "sign-in lockout: must be positive")],
)  # fmt: skip
def test_bad_sign_in_limits_are_one_line(flag, value, says, capsys):
    assert main(["app", "--auth", "alice:pw", flag, value]) == 2
    assert says in one_line_error(capsys)
