"""The Gradio app: one tab per method, and the same operations over HTTP (Gradio's API:
``/edit``, ``/live_frame``, ``/generate``, ``/personalise_tune``, ``/personalise_list``,
``/personalise``, ``/personalise_delete``, ``/group``, ``/restore``). A tab whose model was not
given says it is not available on this server.

Safe by default: bound to 127.0.0.1; every upload passes through the input gate before a
handler sees it (a rejected upload becomes a message in the page, the app keeps serving);
requests queue with a concurrency limit, so a burst is served in order and none is lost.
Tuned identities belong to whoever tuned them (:mod:`.identities`); the request plumbing
(gates, owner, one-line errors) is :mod:`.serving`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import InputError, optional_import
from . import handlers
from .models import ModelRegistry
from .serving import answers, discard_uploads, gate_pose, gate_upload, gate_uploads, owner_of

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


def _result(res: Any) -> tuple[Any, str]:
    """A method's image and its report: the seconds taken, then its notes."""
    return res.image, "\n".join([f"{res.seconds:.2f} s", *res.notes])


def _output_column(label: str, image_id: str, report_id: str, *, lines: int) -> tuple[Any, Any]:
    """A tab's output: the image (served as PNG) and the report box under it."""
    image = gr.Image(label=label, elem_id=image_id, format="png")
    return image, gr.Textbox(label="Report", lines=lines, elem_id=report_id)


def _endpoint(
    button: Any,
    fn: Callable,
    inputs: list,
    outputs: list,
    name: str,
    *,
    limit: int | None,
    header: Any = None,
) -> None:
    """Wire ``button`` to ``fn`` as the HTTP endpoint ``/name``: queued with ``limit``
    concurrent calls, and ``preprocess=False`` so every upload reaches the project's gate
    (:func:`.serving.gate_upload`) before anything opens it. ``header``: ``(fn, component)``
    refreshed after each call (the models' state: a first call loads one)."""
    event = button.click(
        fn, inputs, outputs, api_name=name, concurrency_limit=limit, preprocess=False
    )
    if header is not None:
        event.then(*header, queue=False, api_visibility="private")


def _availability(status: dict[str, str], method: str) -> str:
    """A tab heading's last line: whether this server offers the method."""
    if status[method] == "not available on this server":
        return "Not available on this server."
    return "Available on this server."


#: Tuning requests that may wait for a free tuning slot at once (the rest wait in the queue).
TUNE_WAITING = 8


def build_app(registry: ModelRegistry, *, concurrency: int = 1) -> Any:
    """The app as ``gr.Blocks`` (call ``.launch()``, or mount it in a FastAPI app).

    Gradio's own cache of uploads and outputs is emptied of files older than an hour, every
    hour (and entirely at shutdown).
    """

    @answers
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

    @answers
    def live_stream(frame, instruction, rate):
        if frame is None:
            return None, "waiting for the camera", rate
        rate = rate or handlers.FrameRate()
        image = gate_upload(frame, "frame")
        out = handlers.edit_frame(registry.get("edit"), image, instruction)
        fps = rate.tick()
        return out, f"{fps:.1f} frames/s", rate

    @answers
    def live_frame(frame, instruction):
        """One frame through the live editor: the HTTP form of the Live tab's stream (a
        streaming event cannot be called from gradio_client)."""
        image = gate_upload(frame, "frame")
        if image is None:
            raise InputError("frame: upload a frame first")
        start = time.perf_counter()
        out = handlers.edit_frame(registry.get("edit"), image, instruction)
        return out, f"{time.perf_counter() - start:.2f} s"

    @answers
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

    def _identities(request: gr.Request, value: Any = None) -> Any:
        personaliser = registry.get("faceanet")
        return gr.update(choices=personaliser.identities(owner_of(request)), value=value)

    @answers
    def personalise_tune(
        photos,
        gender,
        steps,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        personaliser = registry.get("faceanet")
        try:
            faces = gate_uploads(photos, "photo")
            progress(0, desc="tuning")
            identity = personaliser.tune(
                owner_of(request),
                faces,
                gender,
                steps=int(steps) or None,
                on_wait=lambda: progress(0, desc="waiting for a free tuning slot"),
            )
        finally:
            discard_uploads(photos or [], demo.GRADIO_CACHE)
        return _identities(request, identity), f"tuned: {identity}"

    @answers
    def personalise_list(request: gr.Request):
        return _identities(request)

    def page_identities(request: gr.Request):
        """The caller's list when the page opens (nothing, silently, without FaceA-Net)."""
        if not registry.slots["faceanet"].configured:
            return gr.update(choices=[])
        return personalise_list(request)

    @answers
    def personalise_delete(identity, request: gr.Request):
        registry.get("faceanet").delete(owner_of(request), identity)
        return _identities(request), f"deleted: {identity}"

    @answers
    def personalise(identity, prompt, context, seed, steps, request: gr.Request):
        res = registry.get("faceanet").generate(
            owner_of(request),
            identity,
            prompt,
            context_image=gate_upload(context, "context image"),
            seed=int(seed),
            steps=int(steps),
        )
        return _result(res)

    @answers
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

    @answers
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

    def header_text() -> str:
        return "# InstantPortrait\nIdentity-preserving portrait edits in one step. Models: " + (
            "; ".join(f"**{k}**: {v}" for k, v in registry.page_status().items())
        )

    status = registry.page_status()
    with gr.Blocks(title="InstantPortrait", delete_cache=(3600, 3600)) as demo:
        header = gr.Markdown(header_text(), elem_id="header")
        after = (header_text, None, header)
        demo.load(*after, api_visibility="private", queue=False)  # fresh at each page load
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
                header=after,
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
                live_stream,
                [camera, live_instruction, rate],
                [live_out, fps, rate],
                api_name="live_stream",
                api_visibility="private",  # gradio_client cannot stream: /live_frame below
                stream_every=0.1,
                concurrency_limit=concurrency,
                preprocess=False,
            )
            live_api = gr.Button(visible=False)
            _endpoint(
                live_api,
                live_frame,
                [camera, live_instruction],
                [live_out, fps],
                "live_frame",
                limit=concurrency,
            )
        with gr.Tab("Generate"):
            gr.Markdown(
                "## Generate (FastFace)\nA photo of a person and a prompt: a few-step SDXL "
                f"portrait of that person. {_availability(status, 'fastface')}"
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
                header=after,
            )
        with gr.Tab("Personalise"):
            gr.Markdown(
                "## Personalise (FaceA-Net)\nUpload 1–3 photos of one person and tune (a few "
                "steps; the bar shows the progress), then generate: the face of a context "
                "photo repainted as that person, or a context model's image for the prompt. "
                "Your identities are yours: nobody else can list, use or delete them; *Delete "
                "this identity* removes its photos and its tuned weights from the server. "
                f"{_availability(status, 'faceanet')}"
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
                    with gr.Row():
                        pz_identity = gr.Dropdown(
                            [], label="Your tuned identities", allow_custom_value=True,
                            elem_id="pz-identity", scale=3,
                        )  # fmt: skip
                        pz_delete = gr.Button(
                            "Delete this identity", variant="stop", elem_id="pz-delete", scale=1
                        )
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
                limit=TUNE_WAITING,
                header=after,
            )
            _endpoint(
                pz_delete,
                personalise_delete,
                [pz_identity],
                [pz_identity, pz_status],
                "personalise_delete",
                limit=None,
            )
            pz_refresh = gr.Button(visible=False)
            _endpoint(
                pz_refresh, personalise_list, [], [pz_identity], "personalise_list", limit=None
            )
            demo.load(page_identities, None, pz_identity, api_visibility="private", queue=False)
            _endpoint(
                pz_run,
                personalise,
                [pz_identity, pz_prompt, pz_context, pz_seed, pz_steps],
                [pz_out, pz_report],
                "personalise",
                limit=concurrency,
                header=after,
            )
        with gr.Tab("Group"):
            gr.Markdown(
                "## Group (FPGA)\n1–4 identity photos and a pose: an OpenPose/COCO keypoints "
                "JSON (identities go to the people left to right) or a pose image with one "
                f"face mask per identity. {_availability(status, 'fpga')}"
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
                header=after,
            )
        with gr.Tab("Restore"):
            gr.Markdown(
                "## Restore (DIIR)\nEvery face smaller than *restore below* pixels is "
                "regenerated (towards the identity photo when given, else itself) and pasted "
                "back; the rest of the image stays bit-identical. "
                f"{_availability(status, 'restore')}"
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
                header=after,
            )
    demo.queue(default_concurrency_limit=concurrency, max_size=256)
    return demo
