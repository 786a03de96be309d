"""The scored item as metrics see it: :class:`ItemContext`.

It holds the output, the input, the prompt and the item's
:class:`~instantportrait.evaluation.items.Subject` (identities with tuning photos and held-out
references, an optional condition). Detections, crops and embeddings are computed once and
shared by the metrics; those of inputs and reference photos are cached across items by the
:class:`~.registry.ModelHub`.

An image is named by ``which``: ``"input"``, ``"output"``, or the :class:`~pathlib.Path` of a
reference photo. The reference rule lives in :meth:`ItemContext.reference_images` (item-level:
CLIP-I, DINO, LPIPS) and :meth:`ItemContext.identity_references` (per identity: face
similarity): held-out photos where given, else the input.

Face similarity of a multi-identity item is defined per identity by a *face matcher*
(:data:`FACE_MATCHERS`, chosen by the protocol's ``face_match``): ``"largest"`` (one
identity: the largest output face) and ``"best"`` (each identity: the output face most similar
to its references). Region-aware rules (FPGA's IoU > 0.5) register another matcher with
:func:`register_face_matcher`; per-item custom metrics register a :class:`~.registry.Metric`
whose ``fn(ctx)`` reads ``ctx.subject``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .. import metric_fns as fns
from .registry import ModelHub

__all__ = ["FACE_MATCHERS", "ItemContext", "Which", "register_face_matcher"]

Which = str | Path

#: ``name -> matcher(ctx, embedder_key) -> {identity name: similarity}``.
FACE_MATCHERS: dict[str, Callable[[ItemContext, str], dict[str, float]]] = {}


def register_face_matcher(
    name: str,
) -> Callable[[Callable[[ItemContext, str], dict[str, float]]], Callable]:
    """Decorator: register a face matcher (see the module docstring) under ``name``."""

    def deco(fn):
        FACE_MATCHERS[name] = fn
        return fn

    return deco


class ItemContext:
    """One scored item.

    Args:
        input_image / output_image: PIL RGB images (the input is the subject's first photo).
        prompt: the prompt as the method received it.
        hub: the model hub.
        text: the text CLIP-T compares with (default: the prompt).
        input_key: identifies the input across items (its file), for the shared cache.
        subject: the item's subject (``None``: one identity whose only photo is the input).
        face_match: the :data:`FACE_MATCHERS` rule for face similarity (default: ``largest``
            for one identity, ``best`` for several).
    """

    def __init__(
        self,
        input_image: Image.Image,
        output_image: Image.Image,
        prompt: str,
        hub: ModelHub,
        *,
        text: str | None = None,
        input_key: str | None = None,
        subject: Any = None,
        face_match: str | None = None,
    ) -> None:
        self.input_image = input_image
        self.output_image = output_image
        self.prompt = prompt
        self.text = text or prompt
        self.hub = hub
        self.subject = subject
        self.input_key = input_key or (
            str(subject.input) if subject is not None else f"id{id(input_image)}"
        )
        multi = subject is not None and subject.multi
        self.face_match = face_match or ("best" if multi else "largest")
        self._local: dict[Any, Any] = {}
        #: Details a metric records beside its value (per-identity values...); the runner
        #: clears it before each metric and stores it with the row.
        self.detail: dict[str, Any] = {}

    # ------------------------------------------------------------------ images
    def _normal(self, which: Which) -> Which:
        if isinstance(which, Path):
            if self.subject is not None and which == self.subject.input:
                return "input"
            return which
        if which not in ("input", "output"):
            raise ValueError(f"which: 'input', 'output' or a reference Path, got {which!r}")
        return which

    def _memo(self, which: Which, key: Any, compute: Callable[[], Any]) -> Any:
        which = self._normal(which)
        if which == "input":
            return self.hub.cached((self.input_key, *key), compute)
        if isinstance(which, Path):
            return self.hub.cached(("file", str(which), *key), compute)
        if key not in self._local:
            self._local[key] = compute()
        return self._local[key]

    def image(self, which: Which) -> Image.Image:
        """The ``"input"``, ``"output"`` or a reference photo (loaded through the gate)."""
        which = self._normal(which)
        if which == "input":
            return self.input_image
        if which == "output":
            return self.output_image
        from ...io import load_image

        return load_image(which)

    def reference_images(self) -> list[Which]:
        """What image-reference metrics (CLIP-I, DINO, LPIPS) compare with: the subject's
        references (item-level, else held-out photos), else the input."""
        if self.subject is None:
            return ["input"]
        return [self._normal(p) for p in self.subject.reference_photos()]

    def identity_references(self, index: int = 0) -> list[Which]:
        """What face similarity compares identity ``index`` with: its held-out photos, else
        its input photo."""
        if self.subject is None:
            return ["input"]
        return [self._normal(p) for p in self.subject.identities[index].face_references()]

    def identity_names(self) -> list[str]:
        """The names of the subject's identities."""
        return ["input"] if self.subject is None else [i.name for i in self.subject.identities]

    def tensor(self, which: Which) -> torch.Tensor:
        """``(1, 3, H, W)`` float in ``[0, 1]`` on the hub's device."""
        return self._memo(
            which, ("tensor",), lambda: fns.pil_to_tensor(self.image(which)).to(self.hub.device)
        )

    # ------------------------------------------------------------------ faces
    def detector(self):
        """The face detector's config (``--weights face-detector=SPEC``; dlib's HOG by
        default)."""
        from ...faces.detectors import FaceDetectorConfig

        value = self.hub.get("face-detector")
        if isinstance(value, FaceDetectorConfig):
            return value
        return FaceDetectorConfig.from_spec(value if isinstance(value, str) else None)

    def detection(self, which: Which):
        """The largest face of the image with its landmarks (empty detections when none)."""
        from ...faces.detect import detect

        return self._memo(
            which,
            ("faces",),
            lambda: detect(
                self.image(which),
                method=self.detector(),
                select="largest",
                landmarks=True,
                upsample=0,
                max_upsample=2,
                raise_if_none=False,
            ),
        )

    def all_faces(self, which: Which):
        """Every face of the image with its landmarks (left to right; the image upsampled
        once, then up to twice more while none is found)."""
        from ...faces.detect import detect

        return self._memo(
            which,
            ("all-faces",),
            lambda: detect(
                self.image(which),
                method=self.detector(),
                select="all",
                landmarks=True,
                upsample=1,  # small faces of a group are missed at 0 while a large one is found
                max_upsample=2,
                raise_if_none=False,
            ),
        )

    def has_face(self, which: Which) -> bool:
        """Whether a face is found in the image."""
        return len(self.detection(which)) > 0

    def _where(self, which: Which) -> str:
        which = self._normal(which)
        if which == "input":
            return f"input {self.input_key}"
        return "output" if which == "output" else f"reference {which}"

    def face_crop(self, which: Which, template: str = "dlib", index: int | None = None):
        """``(1, 3, S, S)`` aligned crop of the largest face (or face ``index`` of
        :meth:`all_faces`); raises ``NoFaceFoundError``."""
        from ...faces.align import crop_faces
        from ...faces.detect import NoFaceFoundError

        def compute() -> torch.Tensor:
            det = self.detection(which) if index is None else self.all_faces(which)
            if len(det) == 0:
                raise NoFaceFoundError(f"{self._where(which)}: no face found")
            k = 0 if index is None else index
            if template != "dlib" and det.keypoints is not None:
                lm, points = det.keypoints, "keypoints"
            else:
                first, second = (det.landmarks5, det.landmarks68)
                lm, points = (first if first is not None else second), "dlib"
            lm = lm[k : k + 1].to(self.hub.device)
            return crop_faces(self.tensor(which), lm, template, points=points)

        return self._memo(which, ("crop", template, index), compute)

    def mtcnn_faces(self, which: Which):
        """Every face MTCNN finds (facenet-pytorch's weights), largest first by area."""
        from ...faces.detect import detect

        return self._memo(
            which,
            ("mtcnn-faces",),
            lambda: detect(
                self.image(which),
                method="mtcnn",
                select="all",
                landmarks=False,
                raise_if_none=False,
            ),
        )

    def reference_crop(self, which: Which, template: str, size: int, index: int | None = None):
        """``(1, 3, size, size)``: the crop the reference code gives its network, or ``None``
        for templates without one. ArcFace: insightface's ``norm_crop`` on the detector's
        five keypoints. FaceNet: facenet-pytorch's MTCNN box crop (MTCNN's largest face; for
        face ``index`` of :meth:`all_faces`, the MTCNN face overlapping it most)."""
        import numpy as np

        from ...faces.align import norm_crop
        from ...faces.detect import NoFaceFoundError
        from ...faces.mtcnn import facenet_crop

        if template not in ("arcface", "facenet"):
            return None

        def compute() -> torch.Tensor:
            det = self.detection(which) if index is None else self.all_faces(which)
            if len(det) == 0:
                raise NoFaceFoundError(f"{self._where(which)}: no face found")
            k = 0 if index is None else index
            img = np.asarray(self.image(which).convert("RGB"))
            if template == "arcface":
                crop = norm_crop(img, det.keypoints[k].numpy(), size)
            else:
                mt = self.mtcnn_faces(which)
                if len(mt) == 0:
                    raise NoFaceFoundError(f"{self._where(which)}: no face found by MTCNN")
                j = _best_overlap(mt.boxes, det.boxes[k]) if index is not None else _largest(mt)
                crop = facenet_crop(img, mt.boxes[j], size)
            t = torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None]
            return (t.float() / 255.0).to(self.hub.device)

        return self._memo(which, ("reference-crop", template, size, index), compute)

    def box_crop(self, which: Which, size: int = 160) -> torch.Tensor:
        """``(1, 3, size, size)``: the largest face's detection box cut out and resized to a
        square, as FastFace's FSC does with facenet-pytorch's MTCNN (``image_size`` 160,
        margin 0): the box truncated to integers and clipped to the image
        (:func:`~instantportrait.faces.mtcnn.facenet_crop`), PIL's bilinear resize; the box's
        aspect is not kept."""
        import numpy as np

        from ...faces.detect import NoFaceFoundError
        from ...faces.mtcnn import facenet_crop

        def compute() -> torch.Tensor:
            det = self.detection(which)
            if len(det) == 0:
                raise NoFaceFoundError(f"{self._where(which)}: no face found")
            img = np.asarray(self.image(which).convert("RGB"))
            crop = facenet_crop(img, det.boxes[0], size)
            return fns.pil_to_tensor(Image.fromarray(crop)).to(self.hub.device)

        return self._memo(which, ("box-crop", size), compute)

    def face_embedding(self, which: Which, embedder_key: str, index: int | None = None):
        """``(1, D)`` L2-normalised identity embedding of the largest face (or face ``index``
        of :meth:`all_faces`)."""
        emb = self.hub.get(embedder_key)

        def compute() -> torch.Tensor:
            crop = self.reference_crop(which, emb.template, emb.input_size, index)
            if crop is None:
                crop = self.face_crop(which, emb.template, index)
            param = next(emb.parameters(), None)
            if param is not None:
                crop = crop.to(param.device, param.dtype)
            with torch.no_grad():
                return F.normalize(emb(crop).float(), dim=-1)

        return self._memo(which, ("embedding", embedder_key, index), compute)

    def identity_similarity(self, embedder_key: str) -> dict[str, float]:
        """``{identity name: similarity}`` under this item's face matcher."""
        if self.face_match not in FACE_MATCHERS:
            raise ValueError(
                f"face_match {self.face_match!r}: one of {', '.join(sorted(FACE_MATCHERS))}"
            )
        return FACE_MATCHERS[self.face_match](self, embedder_key)

    def reference_embedding(self, index: int, embedder_key: str) -> list[torch.Tensor]:
        """The ``(1, D)`` embeddings of identity ``index``'s references (faceless ones raise)."""
        return [self.face_embedding(r, embedder_key) for r in self.identity_references(index)]

    # ------------------------------------------------------------------ CLIP
    def clip_image(self, which: Which, model_key: str, preprocess: str = "crop") -> torch.Tensor:
        """``(1, D)`` CLIP image embedding of the whole image (``preprocess``: see
        :func:`~..metric_fns.clip_image_embeddings`)."""
        model = self.hub.get(model_key)
        return self._memo(
            which,
            ("clip", model_key, preprocess),
            lambda: fns.clip_image_embeddings(model, self.tensor(which), preprocess),
        )

    def clip_text(self, model_key: str, text: str) -> torch.Tensor:
        """``(1, D)`` CLIP text embedding (cached across items)."""
        model = self.hub.get(model_key)
        return self.hub.cached(
            ("clip-text", model_key, text),
            lambda: fns.clip_text_embeddings(model, self.hub.tokenizer(), [text]),
        )


def _largest(det) -> int:
    b = det.boxes
    return int(torch.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))


def _best_overlap(boxes: torch.Tensor, box: torch.Tensor) -> int:
    """The index of the box of ``boxes`` with the largest IoU with ``box``."""
    x0 = torch.maximum(boxes[:, 0], box[0])
    y0 = torch.maximum(boxes[:, 1], box[1])
    x1 = torch.minimum(boxes[:, 2], box[2])
    y1 = torch.minimum(boxes[:, 3], box[3])
    inter = (x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter)
    return int(torch.argmax(iou))


def _mean_cosine(a: torch.Tensor, refs: list[torch.Tensor]) -> float:
    return float(sum(float(fns.cosine(a, r)[0]) for r in refs) / len(refs))


@register_face_matcher("largest")
def match_largest(ctx: ItemContext, embedder_key: str) -> dict[str, float]:
    """Each identity against the output's largest face (the single-identity rule)."""
    out = ctx.face_embedding("output", embedder_key)
    return {
        name: _mean_cosine(out, ctx.reference_embedding(k, embedder_key))
        for k, name in enumerate(ctx.identity_names())
    }


@register_face_matcher("best")
def match_best(ctx: ItemContext, embedder_key: str) -> dict[str, float]:
    """Each identity against the output face most similar to its references (any face may
    serve several identities); no face in the output raises ``NoFaceFoundError``."""
    from ...faces.detect import NoFaceFoundError

    n = len(ctx.all_faces("output"))
    if n == 0:
        raise NoFaceFoundError("output: no face found")
    outs = [ctx.face_embedding("output", embedder_key, index=i) for i in range(n)]
    result = {}
    for k, name in enumerate(ctx.identity_names()):
        refs = ctx.reference_embedding(k, embedder_key)
        result[name] = max(_mean_cosine(o, refs) for o in outs)
    return result
