"""The app in front of other people, through ``gradio_client`` on the tiny bundles: sign-in,
identities that belong to whoever tuned them, deletion, retention and the limits."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}
#: bytes: grace_hopper.jpg (88 kB) passes, astronaut.png (422 kB) does not
MAX_UPLOAD = 300_000


@pytest.fixture(scope="module")
def shared_app(method_bundles, tmp_path_factory, app_serving, tiny_faceanet):
    """(url, registry, demo): the Personalise tab behind sign-in, at most 2 identities a user."""
    from instantportrait.app import ModelRegistry, build_app
    from instantportrait.app.access import Credentials
    from instantportrait.app.serving import sign_in_options

    workdir = tmp_path_factory.mktemp("shared_workdir")
    registry = ModelRegistry(
        faceanet_base=str(method_bundles["inpaint"]),
        faceanet={**tiny_faceanet, "max_identities": 2},
        workdir=str(workdir),
    )
    demo = build_app(registry)
    users = Credentials(plain=USERS.items())
    with app_serving(demo, max_file_size=MAX_UPLOAD, **sign_in_options(users)) as url:
        yield url, registry, demo


def signed_in(shared_app, user: str):
    url = shared_app[0]
    return gradio_client.Client(
        url, auth=(user, USERS[user]), verbose=False, httpx_kwargs={"timeout": 120}
    )


def ids(update) -> list[str]:
    return [c[1] if isinstance(c, (list, tuple)) else c for c in update["choices"]]


def tune(client, photo: Path) -> str:
    _, status = client.predict(
        [gradio_client.handle_file(str(photo))], "woman", 1, api_name="/personalise_tune"
    )
    return status.removeprefix("tuned: ")


def personalise(client, identity: str, photo: Path):
    return client.predict(
        identity, "a woman", gradio_client.handle_file(str(photo)), 0, 1, api_name="/personalise"
    )


def refusal(call) -> str:
    with pytest.raises(Exception) as info:  # gradio_client raises AppError
        call()
    return str(info.value)


def test_two_users_each_see_use_and_delete_only_their_own(shared_app, grace_hopper_path):
    alice, bob = signed_in(shared_app, "alice"), signed_in(shared_app, "bob")
    mine = tune(alice, grace_hopper_path)
    assert ids(alice.predict(api_name="/personalise_list")) == [mine]
    assert mine not in ids(bob.predict(api_name="/personalise_list"))
    unknown = "20990101-000000-abcdef"
    # someone else's id gets the very answer an unknown id gets: ids cannot be probed
    use_other = refusal(lambda: personalise(bob, mine, grace_hopper_path))
    use_unknown = refusal(lambda: personalise(bob, unknown, grace_hopper_path))
    assert use_other == use_unknown and "no such identity" in use_other
    delete_other = refusal(lambda: bob.predict(mine, api_name="/personalise_delete"))
    delete_unknown = refusal(lambda: bob.predict(unknown, api_name="/personalise_delete"))
    assert delete_other == delete_unknown == use_other
    image, report = personalise(alice, mine, grace_hopper_path)  # still alice's, intact
    assert f"identity {mine}" in report


def test_an_unauthenticated_request_is_refused(shared_app):
    url = shared_app[0]
    with pytest.raises(Exception):  # noqa: B017 - the client cannot even read the API
        gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception):  # noqa: B017
        gradio_client.Client(url, auth=("alice", "bob-pw"), verbose=False)
    for route in ("gradio_api/info", "config"):
        assert httpx.get(url + route).status_code == 401
    post = httpx.post(url + "gradio_api/call/personalise_list", json={"data": []})
    assert post.status_code == 401


def test_deletion_leaves_no_file_of_the_identity(shared_app, grace_hopper_path):
    _, registry, demo = shared_app
    carol = signed_in(shared_app, "carol")
    identity = tune(carol, grace_hopper_path)
    folder = registry.identities.find("user:carol", identity)
    # the uploaded photo is gone as soon as tuning ends, our copy and Gradio's upload alike
    photo = grace_hopper_path.read_bytes()
    cache = Path(demo.GRADIO_CACHE)
    assert not (folder / "photos").exists()
    assert not [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == photo]
    update, status = carol.predict(identity, api_name="/personalise_delete")
    assert status == f"deleted: {identity}" and identity not in ids(update)
    left = [p for p in Path(registry.workdir).rglob("*")]
    assert not [p for p in left if identity in str(p)] and not folder.exists()
    assert "no such identity" in refusal(lambda: personalise(carol, identity, grace_hopper_path))


def test_retention_removes_an_aged_identity(shared_app, grace_hopper_path):
    from instantportrait.app.identities import RetentionSweeper

    _, registry, _ = shared_app
    alice = signed_in(shared_app, "alice")
    before = set(ids(alice.predict(api_name="/personalise_list")))
    old = tune(alice, grace_hopper_path)
    meta = registry.identities.find("user:alice", old) / "identity.json"
    meta.write_text(json.dumps({"created": time.time() - 3 * 3600}))  # tuned 3 h ago
    sweeper = RetentionSweeper(registry.identities, hours=2)
    sweeper.start()  # the check at start
    sweeper.stop()
    assert set(ids(alice.predict(api_name="/personalise_list"))) == before
    assert not [p for p in Path(registry.workdir).rglob("*") if old in str(p)]


def test_limits_are_one_line_answers(shared_app, grace_hopper_path, astronaut_path):
    bob = signed_in(shared_app, "bob")
    big = refusal(
        lambda: bob.predict(
            [gradio_client.handle_file(str(astronaut_path))], "woman", 1,
            api_name="/personalise_tune",
        )
    )  # fmt: skip
    assert str(MAX_UPLOAD) in big and "\n" not in big.strip()
    while len(ids(bob.predict(api_name="/personalise_list"))) < 2:
        tune(bob, grace_hopper_path)
    cap = refusal(lambda: tune(bob, grace_hopper_path))
    assert "delete one first" in cap and "\n" not in cap.strip()


def test_a_refused_request_is_one_log_line_without_paths(
    shared_app, tmp_path, caplog, capfd, grace_hopper_path
):
    from PIL import Image

    dave = signed_in(shared_app, "dave")
    flat = tmp_path / "flat.png"
    Image.new("RGB", (96, 96), (120, 130, 140)).save(flat)
    capfd.readouterr()
    logger = logging.getLogger("instantportrait.app")
    handlers = [caplog.handler] if not logger.propagate else []  # (the CLI stops it)
    logger.handlers.extend(handlers)
    with caplog.at_level(logging.INFO, logger="instantportrait.app"):
        message = refusal(
            lambda: dave.predict(
                [gradio_client.handle_file(str(grace_hopper_path)),
                 gradio_client.handle_file(str(flat))], "man", 1,
                api_name="/personalise_tune",
            )
        )  # fmt: skip
    for handler in handlers:
        logger.removeHandler(handler)
    assert "photo 2: no face found" in message and "--" not in message
    lines = [r.getMessage() for r in caplog.records if r.name == "instantportrait.app"]
    assert len(lines) == 1 and lines[0].startswith("refused /personalise_tune: photo 2: no face")
    assert "\n" not in lines[0] and "/" not in lines[0].removeprefix("refused /")
    assert all(r.exc_info is None for r in caplog.records)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
