"""The app in a real browser: headless Chromium (Debian's) driven by Playwright.

Runs when Playwright and a Chromium executable are present (``make test-browser`` installs
them); skipped with the reason otherwise. Screenshots go to ``outputs/test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "outputs" / "test-artifacts"


#: the method tabs and their headings (each says which model it runs or which option gives it)
METHOD_TABS = {
    "Generate": "Generate (FastFace)",
    "Personalise": "Personalise (FaceA-Net)",
    "Group": "Group (FPGA)",
    "Restore": "Restore (DIIR)",
}


#: whether the Live tab's camera video has frames to show
VIDEO_PLAYING = (
    "() => { const v = document.querySelector('#live-input video');"
    " return !!v && v.readyState >= 2; }"
)


def chromium_path() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("needs Chromium (apt-get install chromium, or make test-browser)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe,
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
            ],
        )
        try:
            yield b
        finally:
            b.close()


def test_edit_live_and_method_tabs_in_chromium(running_app, browser, astronaut_path):
    url, _ = running_app
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["camera"])
    page = context.new_page()
    page.goto(url)
    page.locator("#edit-input input[type=file]").set_input_files(str(astronaut_path))
    page.locator("#edit-input img").first.wait_for(timeout=30_000)
    page.locator("#edit-run").click()
    out = page.locator("#edit-output img").first
    out.wait_for(timeout=120_000)
    assert out.get_attribute("src")
    page.wait_for_function(
        "() => document.querySelector('#edit-report textarea').value.includes('edit(s)')",
        timeout=60_000,
    )
    # the header follows the models: the editor loaded by this first edit
    page.wait_for_function(
        "() => document.querySelector('#header').innerText.includes('edit: loaded')",
        timeout=30_000,
    )
    page.screenshot(path=str(ARTIFACTS / "app-edit.png"), full_page=True)

    page.get_by_role("tab", name="Live").click()
    cam = page.locator("#live-input")
    cam.wait_for(timeout=30_000)
    # the webcam asks for access once it has rendered, which may come late on a loaded
    # machine: click it whenever it shows, until the camera's video plays, then record
    access = page.get_by_text("Click to Access Webcam")
    deadline = time.monotonic() + 60
    while not page.evaluate(VIDEO_PLAYING):
        if access.count() and access.first.is_visible():
            access.first.click()
        assert time.monotonic() < deadline, "the webcam's video never started"
        page.wait_for_timeout(250)
    cam.get_by_role("button", name="capture photo").first.click()  # "Record": start streaming
    page.locator("#live-output img").first.wait_for(timeout=120_000)
    # two frames at least: a rate above zero shows the stream keeps going
    page.wait_for_function(
        "() => parseFloat(document.querySelector('#live-fps textarea').value) > 0",
        timeout=120_000,
    )
    fps = page.locator("#live-fps textarea").input_value()
    page.screenshot(path=str(ARTIFACTS / "app-live.png"), full_page=True)
    assert fps.endswith("frames/s") and float(fps.split()[0]) > 0

    for tab, heading in METHOD_TABS.items():
        page.get_by_role("tab", name=tab).click()
        page.get_by_role("heading", name=heading).wait_for(timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / f"app-{tab.lower()}.png"), full_page=True)
    context.close()
