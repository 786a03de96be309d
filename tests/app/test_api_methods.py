"""Every endpoint once through ``gradio_client`` against the running app (``/edit``'s burst is
in test_api.py)."""

from __future__ import annotations

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client(running_app):
    url, _ = running_app
    return gradio_client.Client(url, verbose=False, httpx_kwargs={"timeout": 120})


def test_generate_endpoint(client, astronaut_path):
    image, report = client.predict(
        gradio_client.handle_file(str(astronaut_path)),
        "a portrait in a garden",
        "fastface-am1",
        0.8,
        0,
        1,
        api_name="/generate",
    )
    assert Image.open(image).size == (32, 32) and "turbo/fastface-am1" in report


def test_group_endpoint_with_two_identities(client, astronaut_path, two_person_pose):
    face = gradio_client.handle_file(str(astronaut_path))
    image, report = client.predict(
        [face, face],
        gradio_client.handle_file(str(two_person_pose)),
        None,
        "two people on a beach",
        0,
        1,
        5.0,
        api_name="/group",
    )
    assert Image.open(image).size == (64, 64) and "2 identities" in report


def test_restore_endpoint_passes_a_face_free_image_through(client, tmp_path):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (48, 40), (120, 130, 140)).save(flat)
    image, report = client.predict(
        gradio_client.handle_file(str(flat)), None, 100, 1, api_name="/restore"
    )
    assert Image.open(image).size == (48, 40) and "no face found" in report


#: every endpoint the app offers, each called by a test of this file or test_api.py
ENDPOINTS = {
    "/edit",
    "/live_frame",
    "/generate",
    "/personalise_tune",
    "/personalise_list",
    "/personalise",
    "/personalise_delete",
    "/group",
    "/restore",
}


def test_the_api_lists_exactly_the_tested_endpoints(client):
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == (
        ENDPOINTS
    )


def test_live_frame_endpoint_edits_one_frame(client, astronaut_path):
    """The Live tab streams; its HTTP form takes one frame (gradio_client cannot stream)."""
    image, report = client.predict(
        gradio_client.handle_file(str(astronaut_path)), "as a marble statue", api_name="/live_frame"
    )
    assert max(Image.open(image).size) == 256 and report.endswith(" s")


def _choices(update) -> list[str]:
    """The ids of a Dropdown update (choices are ``[label, value]`` pairs)."""
    return [c[1] if isinstance(c, (list, tuple)) else c for c in update["choices"]]


def test_personalise_endpoints_tune_then_generate(client, astronaut_path, grace_hopper_path):
    photo = gradio_client.handle_file(str(astronaut_path))
    update, status = client.predict([photo], "woman", 1, api_name="/personalise_tune")
    identity = status.removeprefix("tuned: ")  # the first output updates the page's list
    assert update["value"] == identity and identity in _choices(update)
    assert identity in _choices(client.predict(api_name="/personalise_list"))
    image, report = client.predict(
        identity,
        "a woman, smiling",
        gradio_client.handle_file(str(grace_hopper_path)),
        0,
        1,
        api_name="/personalise",
    )
    assert Image.open(image).size == Image.open(grace_hopper_path).size
    assert f"identity {identity}" in report
    update, status = client.predict(identity, api_name="/personalise_delete")
    assert status == f"deleted: {identity}" and identity not in _choices(update)


def test_hostile_upload_to_a_method_tab_is_a_message(client, hostile_files, tmp_path):
    with pytest.raises(Exception, match="pixels"):  # gradio_client raises AppError
        client.predict(
            gradio_client.handle_file(str(hostile_files["pixel bomb"])), None, 100, 1,
            api_name="/restore",
        )  # fmt: skip
    flat = tmp_path / "flat.png"
    Image.new("RGB", (24, 16), (10, 20, 30)).save(flat)
    image, _ = client.predict(
        gradio_client.handle_file(str(flat)), None, 100, 1, api_name="/restore"
    )
    assert Image.open(image).size == (24, 16)
