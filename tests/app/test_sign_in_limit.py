"""Failed sign-ins pause a user name or a client address, on a fake clock: the N-th failure
pauses, the pause ends after the lockout, success clears the count, other names are not
affected, and an unknown name is counted and answered exactly like a known one with a wrong
password. Then the same through the running server (HTTP and gradio_client)."""

from __future__ import annotations

import pytest

from instantportrait.app import access
from instantportrait.app.sign_in_limit import (
    SignInLimits,
    SignInPaused,
    SignInThrottle,
    client_address,
)
from instantportrait.errors import InputError

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
LIMITS = SignInLimits(failures=3, window=600.0, lockout=300.0, address_failures=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def users_on(clock: Clock, limits: SignInLimits = LIMITS) -> access.Credentials:
    return access.Credentials(plain=USERS.items(), throttle=SignInThrottle(limits, clock=clock))


def attempt(users, name: str, password: str) -> str:
    """What a sign-in gets: "ok", "refused" (wrong), or the pause's message."""
    try:
        return "ok" if users(name, password) else "refused"
    except SignInPaused as exc:
        return f"paused: {exc}"


def test_the_nth_failure_pauses_until_the_lockout_ends():
    clock = Clock()
    users = users_on(clock)
    assert [attempt(users, "alice", "guess") for _ in range(3)] == ["refused"] * 3
    # paused: even the right password is refused, without being checked
    assert attempt(users, "alice", "alice-pw") == "paused: sign-in: too many failed " \
        "attempts; try again in 5 minutes"  # fmt: skip
    clock.now += 299.0
    with pytest.raises(SignInPaused) as info:
        users("alice", "alice-pw")
    assert info.value.retry_after == pytest.approx(1.0)
    assert "try again in 1 minute" in str(info.value)
    clock.now += 1.0  # exactly the lockout after the third failure
    assert attempt(users, "alice", "alice-pw") == "ok"


def test_only_failures_within_the_window_count():
    clock = Clock()
    users = users_on(clock)
    attempt(users, "alice", "guess")
    clock.now += 600.0  # the first failure leaves the window
    assert [attempt(users, "alice", "guess") for _ in range(2)] == ["refused"] * 2
    assert attempt(users, "alice", "alice-pw") == "ok"
    clock.now += 1.0
    attempt(users, "alice", "guess")
    clock.now += 599.0  # three failures within 600 s
    attempt(users, "alice", "guess")
    attempt(users, "alice", "guess")
    assert attempt(users, "alice", "alice-pw").startswith("paused")


def test_success_clears_the_count_and_other_users_are_not_affected():
    clock = Clock()
    users = users_on(clock)
    for _ in range(2):
        assert [attempt(users, "alice", "guess") for _ in range(2)] == ["refused"] * 2
        assert attempt(users, "alice", "alice-pw") == "ok"  # 2 + 2 failures never pause
    for _ in range(3):
        attempt(users, "alice", "guess")
    assert attempt(users, "alice", "alice-pw").startswith("paused")
    assert attempt(users, "bob", "bob-pw") == "ok"
    assert [attempt(users, "bob", "guess") for _ in range(2)] == ["refused"] * 2
    assert attempt(users, "bob", "bob-pw") == "ok"


def test_an_unknown_name_is_counted_and_answered_like_a_wrong_password(monkeypatch):
    calls = []
    real = access._scrypt
    monkeypatch.setattr(access, "_scrypt", lambda *a: calls.append(1) or real(*a))

    def story(name: str) -> tuple[list[str], int]:
        clock = Clock()
        users = users_on(clock)
        calls.clear()
        seen = [attempt(users, name, "guess") for _ in range(4)]
        clock.now += 120.0
        seen.append(attempt(users, name, "alice-pw"))
        clock.now += 180.0
        seen.append(attempt(users, name, "guess"))
        return seen, len(calls)

    known, unknown = story("alice"), story("mallory")
    assert known == unknown
    paused = "paused: sign-in: too many failed attempts; try again in {} minutes"
    assert known[0] == ["refused"] * 3 + [paused.format(5), paused.format(3), "refused"]
    assert known[1] == 4  # scrypt ran for the 3 failures and the one after the lockout only


def test_one_address_is_paused_across_names_and_a_success_does_not_clear_it():
    clock = Clock()
    users = users_on(clock)
    token = client_address.set("203.0.113.7")
    try:
        for name in ("carol", "dave", "erin", "frank"):  # 4 names, one failure each
            assert attempt(users, name, "guess") == "refused"
        assert attempt(users, "alice", "alice-pw") == "ok"  # does not clear the address
        assert attempt(users, "grace", "guess") == "refused"  # the 5th failure from here
        assert attempt(users, "bob", "bob-pw").startswith("paused")  # any name, from here
    finally:
        client_address.reset(token)
    token = client_address.set("198.51.100.1")
    try:
        assert attempt(users, "bob", "bob-pw") == "ok"  # from elsewhere
    finally:
        client_address.reset(token)
    off = users_on(Clock(), SignInLimits(failures=3, address_failures=0))
    token = client_address.set("203.0.113.7")
    try:
        for name in ("carol", "dave", "erin", "frank", "grace", "heidi"):
            attempt(off, name, "guess")
        assert attempt(off, "bob", "bob-pw") == "ok"  # the address limit turned off
    finally:
        client_address.reset(token)


def test_made_up_names_cannot_grow_the_counters_without_bound():
    clock = Clock()
    throttle = SignInThrottle(LIMITS, clock=clock, max_tracked=50)
    for i in range(500):
        throttle.failed(f"user{i}" + "x" * 1000)
    assert len(throttle) == 50
    clock.now += 600.0  # past the window and the lockout: nothing left to remember
    assert len(throttle) == 0


@pytest.mark.parametrize(
    "bad",
    [{"failures": 0}, {"address_failures": -1}, {"window": 0.0}, {"lockout": -5.0}],
)
def test_bad_limits_are_one_line(bad):
    with pytest.raises(InputError, match="^sign-in [a-z ]+: "):
        SignInLimits(**bad)


def test_defaults_and_their_description():
    limits = SignInLimits()
    assert (limits.failures, limits.window, limits.lockout, limits.address_failures) == (
        5, 900.0, 900.0, 20,
    )  # fmt: skip
    assert limits.describe() == (
        "after 5 failed sign-ins of a user name within 15 minutes, its sign-in pauses for 15 "
        "minutes (20 failures from one address pause that address)"
    )


def test_the_running_server_pauses_sign_in(app_serving, tmp_path):
    """Through Gradio's /login: the pause is a 400 with its reason, for a known and an
    unknown name alike; a forwarded address (from a local proxy) is counted as the client's;
    gradio_client signs in again once the lockout is over."""
    gradio_client = pytest.importorskip("gradio_client")
    httpx = pytest.importorskip("httpx")
    from instantportrait.app import ModelRegistry, build_app
    from instantportrait.app.serving import sign_in_options

    clock = Clock()
    demo = build_app(ModelRegistry(workdir=str(tmp_path / "work")))
    with app_serving(demo, **sign_in_options(users_on(clock))) as url:

        def login(name, password, via):
            response = httpx.post(
                url + "login",
                data={"username": name, "password": password},
                headers={"X-Forwarded-For": via},  # as a reverse proxy on this machine sends
            )
            if response.json().get("detail", "").startswith("sign-in:"):
                assert response.headers["Retry-After"] == "300"  # the fake clock stands still
            return response.status_code, response.json()["detail"] if response.is_error else ""

        for name, via in (("alice", "192.0.2.1"), ("mallory", "192.0.2.2")):
            wrong = [login(name, "guess", via) for _ in range(3)]
            assert wrong == [(400, "Incorrect credentials.")] * 3
            paused = login(name, "alice-pw", via)
            assert paused == (400, "sign-in: too many failed attempts; try again in 5 minutes")
        with pytest.raises(ValueError, match="Could not login"):
            gradio_client.Client(url, auth=("alice", "alice-pw"), verbose=False)
        # five failures from one address, one per name: that address is paused for any name
        spray = [login(f"user{i}", "guess", "192.0.2.3") for i in range(5)]
        assert spray == [(400, "Incorrect credentials.")] * 5
        assert login("bob", "bob-pw", "192.0.2.3")[1].startswith("sign-in: too many")
        assert login("bob", "bob-pw", "192.0.2.4") == (200, "")
        clock.now += 300.0
        client = gradio_client.Client(url, auth=("alice", "alice-pw"), verbose=False)
        assert client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_checking_a_password_leaves_the_event_loop_free():
    """scrypt costs tens of milliseconds of CPU: the ``auth`` Gradio awaits checks it on a
    worker thread. Here the check waits for a step the event loop must take meanwhile; checked
    on the loop itself, that step never comes and the sign-in fails after the timeout. The
    client address set by the middleware reaches the check on its thread."""
    import asyncio
    import threading

    from instantportrait.app.serving import sign_in_options

    seen = {}
    loop_ran = threading.Event()

    class Slow:
        throttle = SignInThrottle(LIMITS)

        def __call__(self, name: str, password: str) -> bool:
            seen["address"] = client_address.get()
            return loop_ran.wait(timeout=5.0) and (name, password) == ("alice", "alice-pw")

    auth = sign_in_options(Slow())["auth"]

    async def main() -> bool:
        client_address.set("192.0.2.9")
        check = asyncio.ensure_future(auth("alice", "alice-pw"))
        await asyncio.sleep(0.05)  # runs only if the check left the loop
        loop_ran.set()
        return await check

    assert asyncio.run(main()) is True
    assert seen["address"] == "192.0.2.9"
