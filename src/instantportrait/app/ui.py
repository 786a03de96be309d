"""The Gradio app: one tab per method, and the same operations over HTTP (Gradio's API:
``/edit``, ``/live_frame``, ``/generate``, ``/personalise_tune``, ``/personalise``, ``/group``,
``/restore``). A tab whose model was not given says which option provides it.

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

#: FastFace's published presets (the Generate tab's choices)
FASTFACE_PRESETS = (
    "fastface-am1",
    "fastface-am2",
    "baseline",
    "am1",
    "am1_paper",
    "am2",
    "am2_noadain",
    "dcg",
)


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


def _result(res: Any) -> tuple[Any, str]:
    """A method's image and its report: the seconds taken, then its notes."""
    return res.image, "\n".join([f"{res.seconds:.2f} s", *res.notes])


def _output_column(label: str, image_id: str, report_id: str, *, lines: int) -> tuple[Any, Any]:
    """A tab's output: the image (served as PNG) and the report box under it."""
    image = gr.Image(label=label, elem_id=image_id, format="png")
    return image, gr.Textbox(label="Report", lines=lines, elem_id=report_id)


def _endpoint(
    button: Any, fn: Callable, inputs: list, outputs: list, name: str, *, limit: int
) -> None:
    """Wire ``button`` to ``fn`` as the HTTP endpoint ``/name``: queued with ``limit``
    concurrent calls, and ``preprocess=False`` so every upload reaches the project's gate
    (:func:`gate_upload`) before anything opens it."""
    button.click(fn, inputs, outputs, api_name=name, concurrency_limit=limit, preprocess=False)


#: Largest pose keypoints JSON accepted (bytes).
MAX_POSE_JSON = 1 << 20


def gate_uploads(payloads: Any, name: str) -> list[Any]:
    """Several uploads (a multi-file field) through :func:`gate_upload`, numbered in messages."""
    if payloads is None:
        return []
    items = payloads if isinstance(payloads, list) else [payloads]
    return [gate_upload(p, f"{name} {i + 1}") for i, p in enumerate(items) if p is not None]


def gate_pose(payload: Any) -> Any:
    """A pose upload: a keypoints JSON's bytes (size-capped), or an image through the gate."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        path, orig = payload.get("path"), payload.get("orig_name") or ""
    else:
        path, orig = getattr(payload, "path", None), getattr(payload, "orig_name", "") or ""
    if path and (str(orig) or str(path)).lower().endswith(".json"):
        import os

        if os.path.getsize(path) > MAX_POSE_JSON:
            raise InputError(f"pose: a keypoints JSON over {MAX_POSE_JSON} bytes")
        with open(path, "rb") as f:
            return f.read()
    return gate_upload(payload, "pose")


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

    @_user_errors
    def generate(photo, prompt, preset, scale, seed, steps):
        from . import methods

        face = gate_upload(photo, "identity photo")
        if face is None:
            raise InputError("identity photo: upload a photo of the person first")
        res = methods.generate_fastface(
            registry.get("fastface"),
            face,
            prompt,
            preset=str(preset),
            ip_adapter_scale=float(scale),
            seed=int(seed),
            steps=int(steps),
            resolution=registry.fastface_resolution,
        )
        return _result(res)

    @_user_errors
    def personalise_tune(photos, gender, steps, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        personaliser = registry.get("faceanet")
        faces = gate_uploads(photos, "photo")
        progress(0, desc="tuning")
        identity = personaliser.tune(faces, gender, steps=int(steps) or None)
        choices = personaliser.identities()
        return gr.update(choices=choices, value=identity), f"tuned: {identity}"

    @_user_errors
    def personalise(identity, prompt, context, seed, steps):
        res = registry.get("faceanet").generate(
            identity,
            prompt,
            context_image=gate_upload(context, "context image"),
            seed=int(seed),
            steps=int(steps),
        )
        return _result(res)

    @_user_errors
    def group(photos, pose, masks, prompt, seed, steps, guidance):
        from . import methods

        faces = gate_uploads(photos, "identity")
        res = methods.generate_group(
            registry.get("fpga"),
            faces,
            gate_pose(pose),
            prompt,
            masks=gate_uploads(masks, "mask") or None,
            seed=int(seed),
            steps=int(steps),
            guidance_scale=float(guidance),
        )
        return _result(res)

    @_user_errors
    def restore(image, photo, below, steps):
        from . import methods

        img = gate_upload(image, "image")
        if img is None:
            raise InputError("image: upload an image first")
        res = methods.restore_faces(
            registry.get("restore"),
            img,
            gate_upload(photo, "identity photo"),
            restore_below=float(below),
            steps=int(steps),
        )
        return _result(res)

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
            _endpoint(
                run,
                edit,
                [portrait, instructions, steps, iterations, seed, measure],
                [result, report],
                "edit",
                limit=concurrency,
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
        with gr.Tab("Generate"):
            gr.Markdown(
                "## Generate (FastFace)\nA photo of a person and a prompt: a few-step SDXL "
                f"portrait of that person. Model: {status['fastface']}."
            )
            with gr.Row():
                with gr.Column():
                    ff_photo = gr.Image(label="Identity photo", type="pil", elem_id="ff-input")
                    ff_prompt = gr.Textbox(
                        label="Prompt", value="a portrait in a garden", elem_id="ff-prompt"
                    )
                    with gr.Row():
                        ff_preset = gr.Dropdown(FASTFACE_PRESETS, value="fastface-am1",
                                                label="Preset")  # fmt: skip
                        ff_scale = gr.Slider(0, 2, value=0.8, step=0.05, label="ip_adapter_scale")
                        ff_seed = gr.Number(label="Seed", value=0, precision=0)
                        ff_steps = gr.Number(label="Steps", value=4, precision=0)
                    ff_run = gr.Button("Generate", variant="primary", elem_id="ff-run")
                with gr.Column():
                    ff_out, ff_report = _output_column(
                        "Portrait", "ff-output", "ff-report", lines=2
                    )
            _endpoint(
                ff_run,
                generate,
                [ff_photo, ff_prompt, ff_preset, ff_scale, ff_seed, ff_steps],
                [ff_out, ff_report],
                "generate",
                limit=concurrency,
            )
        with gr.Tab("Personalise"):
            gr.Markdown(
                "## Personalise (FaceA-Net)\nUpload 1–3 photos of one person and tune (a few "
                "steps; the bar shows the progress), then generate: the face of a context "
                "photo repainted as that person, or a context model's image for the prompt. "
                f"Model: {status['faceanet']}."
            )
            with gr.Row():
                with gr.Column():
                    pz_photos = gr.File(
                        label="Photos of the person (1-3)", file_count="multiple",
                        elem_id="pz-photos",
                    )  # fmt: skip
                    with gr.Row():
                        pz_gender = gr.Radio(["woman", "man"], value="woman", label="Gender")
                        pz_tune_steps = gr.Number(
                            label="Tuning steps (0 = the app's default)", value=0, precision=0
                        )
                    pz_tune = gr.Button("Tune", elem_id="pz-tune")
                    pz_identity = gr.Dropdown([], label="Tuned identity", allow_custom_value=True)
                    pz_status = gr.Textbox(label="Tuning", elem_id="pz-status")
                    pz_prompt = gr.Textbox(label="Prompt", value="a woman, smiling")
                    pz_context = gr.Image(label="Context photo to repaint", type="pil")
                    with gr.Row():
                        pz_seed = gr.Number(label="Seed", value=0, precision=0)
                        pz_steps = gr.Number(label="Steps", value=30, precision=0)
                    pz_run = gr.Button("Generate", variant="primary", elem_id="pz-run")
                with gr.Column():
                    pz_out, pz_report = _output_column(
                        "Personalised", "pz-output", "pz-report", lines=3
                    )
            _endpoint(
                pz_tune,
                personalise_tune,
                [pz_photos, pz_gender, pz_tune_steps],
                [pz_identity, pz_status],
                "personalise_tune",
                limit=1,
            )
            _endpoint(
                pz_run,
                personalise,
                [pz_identity, pz_prompt, pz_context, pz_seed, pz_steps],
                [pz_out, pz_report],
                "personalise",
                limit=concurrency,
            )
        with gr.Tab("Group"):
            gr.Markdown(
                "## Group (FPGA)\n1–4 identity photos and a pose: an OpenPose/COCO keypoints "
                "JSON (identities go to the people left to right) or a pose image with one "
                f"face mask per identity. Model: {status['fpga']}."
            )
            with gr.Row():
                with gr.Column():
                    gp_photos = gr.File(
                        label="Identity photos (1-4)", file_count="multiple", elem_id="gp-input"
                    )
                    gp_pose = gr.File(label="Pose: keypoints JSON or image", elem_id="gp-pose")
                    gp_masks = gr.File(
                        label="Face masks (pose image only, one per identity)",
                        file_count="multiple",
                    )
                    gp_prompt = gr.Textbox(label="Prompt", value="two people on a beach")
                    with gr.Row():
                        gp_seed = gr.Number(label="Seed", value=0, precision=0)
                        gp_steps = gr.Number(label="Steps", value=30, precision=0)
                        gp_guidance = gr.Number(label="Guidance scale", value=5.0)
                    gp_run = gr.Button("Generate group", variant="primary", elem_id="gp-run")
                with gr.Column():
                    gp_out, gp_report = _output_column(
                        "Group portrait", "gp-output", "gp-report", lines=2
                    )
            _endpoint(
                gp_run,
                group,
                [gp_photos, gp_pose, gp_masks, gp_prompt, gp_seed, gp_steps, gp_guidance],
                [gp_out, gp_report],
                "group",
                limit=concurrency,
            )
        with gr.Tab("Restore"):
            gr.Markdown(
                "## Restore (DIIR)\nEvery face smaller than *restore below* pixels is "
                "regenerated (towards the identity photo when given, else itself) and pasted "
                f"back; the rest of the image stays bit-identical. Model: {status['restore']}."
            )
            with gr.Row():
                with gr.Column():
                    rs_image = gr.Image(label="Image", type="pil", elem_id="rs-input")
                    rs_photo = gr.Image(label="Identity photo (optional)", type="pil")
                    with gr.Row():
                        rs_below = gr.Number(label="Restore below (px)", value=100)
                        rs_steps = gr.Number(label="Steps", value=30, precision=0)
                    rs_run = gr.Button("Restore", variant="primary", elem_id="rs-run")
                with gr.Column():
                    rs_out, rs_report = _output_column(
                        "Restored", "rs-output", "rs-report", lines=3
                    )
            _endpoint(
                rs_run,
                restore,
                [rs_image, rs_photo, rs_below, rs_steps],
                [rs_out, rs_report],
                "restore",
                limit=concurrency,
            )
    demo.queue(default_concurrency_limit=concurrency, max_size=256)
    return demo
