"""The Gradio app: one tab per method whose model family has landed, and the same operations
over HTTP (Gradio's API: ``/edit``, ``/live_frame``).

Safe by default: bound to 127.0.0.1; every upload passes through the input gate before a
handler sees it (a rejected upload becomes a message in the page, the app keeps serving);
requests queue with a concurrency limit, so a burst is served in order and none is lost.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import Any

from ..errors import InputError, InstantPortraitError, optional_import
from . import handlers
from .models import ModelRegistry

gr = optional_import("gradio", "app", "the web app")


def gate_upload(payload: Any, name: str = "upload") -> Any:
    """An image payload as Gradio sends it, through :func:`instantportrait.io.load_image`.

    The events that take uploads run with ``preprocess=False``, so Gradio never opens an
    upload itself: the project's gate sees it first (size limit, decompression bombs, empty
    and non-image files), and a rejection is one line shown in the page.
    """
    from ..io import load_image

    if payload is None:
        return None
    if isinstance(payload, dict):
        url, path = payload.get("url"), payload.get("path")
        name = payload.get("orig_name") or name
    else:
        url, path = getattr(payload, "url", None), getattr(payload, "path", None)
    if url and str(url).startswith("data:"):
        try:
            data = base64.b64decode(str(url).split(",", 1)[1], validate=False)
        except (ValueError, IndexError):
            raise InputError(f"{name}: not a valid data URL") from None
        return load_image(data, name=name)
    if path is None:
        raise InputError(f"{name}: no file arrived")
    return load_image(path, name=name)


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show the project's one-line errors as a Gradio message instead of a failed request."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InstantPortraitError as exc:
            raise gr.Error(str(exc)) from None

    return wrapper


def build_app(registry: ModelRegistry, *, concurrency: int = 1) -> Any:
    """The app as ``gr.Blocks`` (call ``.launch()``, or mount it in a FastAPI app)."""

    @_user_errors
    def edit(image, instructions, steps, iterations, seed, measure):
        portrait = gate_upload(image, "portrait")
        if portrait is None:
            raise InputError("portrait: upload a portrait first")
        result = handlers.edit_portrait(
            registry.get("edit"),
            portrait,
            instructions,
            steps=int(steps) or None,
            iterations=int(iterations),
            seed=int(seed),
            measure_identity=bool(measure),
        )
        lines = [f"{len(result.images)} edit(s) in {result.seconds:.2f} s", *result.similarity]
        return result.grid, "\n".join(lines)

    @_user_errors
    def live_frame(frame, instruction, rate):
        if frame is None:
            return None, "waiting for the camera", rate
        rate = rate or handlers.FrameRate()
        image = gate_upload(frame, "frame")
        out = handlers.edit_frame(registry.get("edit"), image, instruction)
        fps = rate.tick()
        return out, f"{fps:.1f} frames/s", rate

    status = registry.status()
    with gr.Blocks(title="InstantPortrait") as demo:
        gr.Markdown(
            "# InstantPortrait\nIdentity-preserving portrait edits in one step. Models: "
            + "; ".join(f"**{k}**: {v}" for k, v in status.items())
        )
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column():
                    portrait = gr.Image(label="Portrait", type="pil", elem_id="edit-input")
                    instructions = gr.Textbox(
                        label="Instruction (one per line for a grid)",
                        value="wearing a 1920s flapper dress, feathered headband",
                        lines=3,
                        elem_id="edit-instruction",
                    )
                    with gr.Row():
                        steps = gr.Number(label="Steps (0 = the model's own)", value=0, precision=0)
                        iterations = gr.Slider(1, 4, value=1, step=1, label="Style boost")
                        seed = gr.Number(label="Seed", value=0, precision=0)
                    measure = gr.Checkbox(label="Measure identity (dlib)", value=True)
                    run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                with gr.Column():
                    result = gr.Image(
                        label="Input, then each edit", elem_id="edit-output", format="png"
                    )
                    report = gr.Textbox(label="Identity", lines=4, elem_id="edit-report")
            run.click(
                edit,
                [portrait, instructions, steps, iterations, seed, measure],
                [result, report],
                api_name="edit",
                concurrency_limit=concurrency,
                preprocess=False,
            )
        with gr.Tab("Live"):
            gr.Markdown(
                "The webcam through the one-step editor, frame by frame "
                f"({handlers.LIVE_RESOLUTION} px long side)."
            )
            with gr.Row():
                camera = gr.Image(
                    sources=["webcam"],
                    streaming=True,
                    type="numpy",
                    label="Camera",
                    elem_id="live-input",
                )
                live_out = gr.Image(label="Edited", elem_id="live-output")
            live_instruction = gr.Textbox(
                label="Instruction", value="as a marble statue", elem_id="live-instruction"
            )
            fps = gr.Textbox(label="Speed", elem_id="live-fps")
            rate = gr.State(None)
            camera.stream(
                live_frame,
                [camera, live_instruction, rate],
                [live_out, fps, rate],
                api_name="live_frame",
                stream_every=0.1,
                concurrency_limit=concurrency,
                preprocess=False,
            )
    demo.queue(default_concurrency_limit=concurrency, max_size=256)
    return demo
