"""The app's overhead and the live tab's speed (tiny bundle on CPU, or any editor you pass).

Measures, in one run:
- one edit called on the pipeline directly (the floor);
- the same edit through the app's HTTP API with ``gradio_client`` (upload, queue, handler,
  gate, PNG encode, download): the difference is the app's overhead;
- the live tab's frames/s: the one-step editor on webcam-sized frames through the stream
  handler, and, when Playwright and Chromium are present, in a real browser with Chromium's
  fake camera (the number a user sees on the page).
Writes ``benchmarks/results/app_<device>.json``.

    python benchmarks/bench_app.py [--model DIR] [--repeats 10] [--resolution 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _browser_fps(url: str, seconds: float) -> float | None:
    sys.path.insert(0, str(ROOT / "tests" / "app"))
    try:
        from playwright.sync_api import sync_playwright
        from test_browser import chromium_path
    except ImportError:
        return None
    exe = chromium_path()
    if exe is None:
        return None
    flags = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=flags)
        context = browser.new_context()
        context.grant_permissions(["camera"])
        page = context.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Live").click()
        page.get_by_text("Click to Access Webcam").first.click()
        page.locator("#live-input").get_by_role("button", name="capture photo").first.click()
        page.wait_for_function(
            "() => /frames\\/s/.test(document.querySelector('#live-fps textarea').value)",
            timeout=120_000,
        )
        time.sleep(seconds)
        text = page.locator("#live-fps textarea").input_value()
        browser.close()
    return float(text.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="editor folder (default: a fresh tiny bundle)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=256, help="edit long side (px)")
    parser.add_argument("--browser-seconds", type=float, default=20.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/app_<device>.json)")
    args = parser.parse_args()

    import gradio_client

    from instantportrait.app import ModelRegistry, build_app
    from instantportrait.app.handlers import edit_frame
    from instantportrait.io import load_image
    from instantportrait.tiny import write_tiny

    tmp = tempfile.TemporaryDirectory()
    model = args.model or str(write_tiny(Path(tmp.name) / "tiny", "edit"))
    registry = ModelRegistry(edit_model=model, device=args.device)
    pipe = registry.get("edit")
    portrait = load_image(EXAMPLE)

    def direct():
        pipe(
            prompt="a red hat",
            image=portrait,
            resolution=args.resolution,
            generator=torch.Generator("cpu").manual_seed(0),
        )

    direct_s = _median_seconds(direct, args.repeats)

    sys.path.insert(0, str(ROOT / "tests" / "app"))
    from conftest import free_port

    demo = build_app(registry)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    client = gradio_client.Client(url, verbose=False)
    # The API edits at the app's own resolution (512); time the pipeline there too.
    api_s = _median_seconds(
        lambda: client.predict(
            gradio_client.handle_file(str(EXAMPLE)), "a red hat", 0, 1, 0, False, api_name="/edit"
        ),
        args.repeats,
    )

    def direct_512():
        pipe(
            prompt="a red hat",
            image=portrait,
            resolution=512,
            generator=torch.Generator("cpu").manual_seed(0),
        )

    direct_512_s = _median_seconds(direct_512, args.repeats)
    frame = load_image(EXAMPLE).resize((640, 480))
    frame_s = _median_seconds(lambda: edit_frame(pipe, frame, "as a marble statue"), args.repeats)
    browser_fps = _browser_fps(url, args.browser_seconds)
    demo.close()

    result = {
        "device": args.device,
        "model": "tiny bundle" if args.model is None else args.model,
        "threads": torch.get_num_threads(),
        "direct_edit_s_at_256": direct_s,
        "direct_edit_s_at_512": direct_512_s,
        "api_edit_s_at_512": api_s,
        "app_overhead_s": api_s - direct_512_s,
        "api_over_direct": api_s / direct_512_s,
        "live_handler_fps": 1.0 / frame_s,
        "live_browser_fps": browser_fps,
    }
    print(f"direct edit (512):     {direct_512_s * 1e3:8.1f} ms")
    print(f"API edit (512):        {api_s * 1e3:8.1f} ms  (x{api_s / direct_512_s:.2f})")
    print(f"app overhead:          {(api_s - direct_512_s) * 1e3:8.1f} ms")
    print(f"live handler:          {1.0 / frame_s:8.1f} frames/s (640x480 in, 256 px edit)")
    print(f"live tab in Chromium:  {browser_fps if browser_fps is not None else 'n/a'} frames/s")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"app_{args.device}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
