"""What a model folder or file is, and whether it fits a use, read without loading weights.

:func:`identify` reads only configs (``model_index.json``, ``*/config.json``) and tensor
headers: safetensors' header through ``safe_open`` (names and shapes, no data), and the
pickle index of a zip-format PyTorch file through a memory-mapped, weights-only
``torch.load`` (tensors stay mapped, unread). It names the layout: an SD1.5
text-to-image UNet has 4 input channels, InstructPix2Pix 8, inpainting 9; SDXL has
``text_time`` added embeddings; an IP-Adapter FaceID-Plus-v2 checkpoint has a perceiver
resampler in ``image_proj``; and so on.

:func:`check_model` is the check every entry point runs before computing: a source that does
not fit its use is one line naming what it is and what the use needs
(:class:`ModelMismatchError`); a missing one is :func:`~.model_sources.missing_model`'s line.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backbones import QWEN_EDIT_CLASSES
from .errors import InputError
from .model_sources import hub_offline, locate, looks_like_hub_id

__all__ = ["USES", "Identity", "ModelMismatchError", "Use", "check_model", "identify"]


class ModelMismatchError(InputError):
    """A model exists but is not what its use needs (the message says both)."""


@dataclass(frozen=True)
class Identity:
    """What :func:`identify` found: a ``kind`` key and a sentence for users."""

    kind: str
    description: str


@dataclass(frozen=True)
class Use:
    """What one use accepts (kinds) and how to say what it needs."""

    kinds: frozenset[str]
    needs: str
    #: kinds whose layout only the loader can check (an old-format pickle): let through.
    lenient: frozenset[str] = frozenset()


_PICKLE = frozenset({"pickle"})

#: ``--for`` uses of ``models check`` and of every loader's check.
USES: dict[str, Use] = {
    "edit": Use(
        frozenset({"instruct-pix2pix", "flux-kontext", "qwen-image-edit"}),
        "an InstructPix2Pix-format pipeline (UNet with 8 input channels: the image latent is "
        "concatenated), a folder, Hub id or single .safetensors file, or a FLUX.1 Kontext "
        "pipeline folder (teacher or exported one-step student) or a Qwen-Image-Edit one "
        "(the first release, 2509 or 2511)",
        _PICKLE,
    ),
    "fastface": Use(
        frozenset({"sdxl"}),
        "an SDXL text-to-image pipeline (or a family name: hyper, lightning, lcm, turbo)",
    ),
    "distilled": Use(
        frozenset({"lora", "sdxl-unet", "sdxl", "sdxl-distilled"}),
        "a few-step SDXL family's weights (Hyper/LCM LoRA, Lightning UNet, Turbo folder)",
    ),
    "ip-adapter": Use(
        frozenset({"ip-adapter-faceid-plus-v2"}),
        "IP-Adapter FaceID-Plus-v2 for SDXL (ip-adapter-faceid-plusv2_sdxl.bin)",
        _PICKLE,
    ),
    "image-encoder": Use(frozenset({"clip-vision"}), "a CLIP vision model folder (ViT-H/14)"),
    "face-model": Use(
        frozenset({"arcface-onnx", "arcface", "insightface-pack"}),
        "an ArcFace model: insightface ONNX (w600k_r50.onnx / glintr100.onnx or their pack "
        "folder) or an arcface_torch .pth/.safetensors",
        _PICKLE,
    ),
    "faceanet": Use(
        frozenset({"sd15-inpainting"}),
        "an SD1.5 inpainting pipeline (UNet with 9 input channels), e.g. "
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
    ),
    "faceanet-context": Use(
        frozenset({"sdxl"}),
        "an SDXL text-to-image pipeline (or a family name: hyper, lightning, lcm, turbo)",
    ),
    "fpga": Use(
        frozenset({"fpga", "repcontrolnet"}),
        "an FPGA pipeline folder (`train fpga`) or a merged RepControlNet folder "
        "(`train repcontrolnet`)",
    ),
    "fpga-base": Use(
        frozenset({"sd15"}),
        "an SD1.5 text-to-image pipeline (UNet with 4 input channels), e.g. "
        "SG161222/Realistic_Vision_V4.0_noVAE or stable-diffusion-v1-5/stable-diffusion-v1-5",
    ),
    "restore": Use(
        frozenset({"diir", "fpga"}),
        "a DIIR restorer folder (SD1.5 + landmark ControlNet) or an FPGA pipeline folder",
    ),
    "codeformer": Use(
        frozenset({"codeformer"}),
        "CodeFormer (codeformer.pth or a saved folder)",
        _PICKLE,
    ),
    "face-parser": Use(
        frozenset({"bisenet"}),
        "a BiSeNet face parser (79999_iter.pth or a saved folder)",
        _PICKLE,
    ),
}

#: ``models check --for`` choices that name a method: its main model's use.
USE_ALIASES = {"generate": "fastface", "train-faceanet": "faceanet"}

_ARCH_NAMES = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL"}
_ROLE = {4: "text-to-image", 8: "InstructPix2Pix-format", 9: "inpainting"}
_PIPELINE_KINDS = {
    "FPGAPipeline": ("fpga", "an FPGA pipeline folder (SD1.5 + ID-ControlNet + resampler)"),
    "RepControlNetPipeline": ("repcontrolnet", "a merged RepControlNet folder (FPGA family)"),
    "DIIRPipeline": ("diir", "a DIIR restorer folder (SD1.5 + landmark ControlNet)"),
}
_CONFIG_KINDS = {
    "ControlNetModel": ("controlnet", "a ControlNet model folder"),
    "CodeFormer": ("codeformer", "a CodeFormer folder"),
    "BiSeNet": ("bisenet", "a BiSeNet face-parser folder"),
    "IDResampler": ("resampler", "an FPGA ID resampler folder"),
    "FluxTransformer2DModel": ("flux-transformer", "a FLUX transformer folder"),
}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _sd_kind(arch: str, channels: int, label: str = "pipeline") -> Identity:
    """``sd15``/``instruct-pix2pix``/``sd15-inpainting`` (SDXL: ``sdxl``...) by channels."""
    role = _ROLE.get(channels, f"{channels}-channel")
    base = {4: "", 8: "instruct-pix2pix", 9: "inpainting"}.get(channels, f"{channels}ch")
    if arch == "sd15":
        kind = {"": "sd15", "instruct-pix2pix": "instruct-pix2pix"}.get(base, f"sd15-{base}")
    else:
        kind = arch if not base else f"{arch}-{base}"
    return Identity(
        kind, f"an {_ARCH_NAMES[arch]} {role} {label} (UNet with {channels} input channels)"
    )


def _unet_arch(config: dict[str, Any], index: dict[str, Any] | None = None) -> str:
    if config.get("addition_embed_type") == "text_time" or (index and "text_encoder_2" in index):
        return "sdxl"
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd15"


def _identify_folder(folder: Path) -> Identity:
    index = _read_json(folder / "model_index.json")
    if index is not None:
        cls = str(index.get("_class_name", ""))
        if cls in _PIPELINE_KINDS:
            return Identity(*_PIPELINE_KINDS[cls])
        if cls.startswith("Flux") or cls == "KontextEditPipeline":
            kontext = "Kontext" in cls
            return Identity(
                "flux-kontext" if kontext else "flux",
                f"a FLUX.1{' Kontext' if kontext else ''} pipeline ({cls})",
            )
        if cls.startswith("QwenImage") or cls == "QwenEditPipeline":
            edit = cls in QWEN_EDIT_CLASSES
            return Identity(
                "qwen-image-edit" if edit else "qwen-image",
                f"a Qwen-Image{'-Edit' if edit else ''} pipeline ({cls})",
            )
        unet = _read_json(folder / "unet" / "config.json")
        if unet is None:
            return Identity("pipeline", f"a {cls or 'diffusers'} pipeline folder without unet/")
        ident = _sd_kind(_unet_arch(unet, index), int(unet.get("in_channels", 4)))
        if cls == "InstantPortraitPipeline":
            channels = int(unet.get("in_channels", 4))
            return Identity(
                ident.kind, f"an InstantPortrait editor (UNet with {channels} input channels)"
            )
        return ident
    if (folder / "faceanet.json").is_file():
        return Identity("faceanet-identity", "a tuned FaceA-Net identity folder")
    if (folder / "bundle.json").is_file():
        return Identity("dataset-bundle", "a `data generate` model bundle")
    config = _read_json(folder / "config.json")
    if config is not None:
        cls = str(config.get("_class_name", ""))
        if cls == "UNet2DConditionModel":
            ident = _sd_kind(_unet_arch(config), int(config.get("in_channels", 4)), "UNet")
            return Identity(ident.kind + "-unet", ident.description)
        if cls in _CONFIG_KINDS:
            return Identity(*_CONFIG_KINDS[cls])
        model_type = str(config.get("model_type", ""))
        archs = " ".join(config.get("architectures") or [])
        if "VisionModel" in archs or model_type == "clip_vision_model":
            return Identity("clip-vision", f"a CLIP vision model folder ({archs or model_type})")
        if model_type == "clip":
            return Identity("clip", "a CLIP model folder (text and vision)")
        if model_type in ("dinov2", "dino", "vit"):
            return Identity("dino", f"a {model_type} vision model folder")
        return Identity("unknown", f"a folder with a config.json of {cls or model_type or '?'}")
    if any((folder / name).is_file() for name in ("w600k_r50.onnx", "glintr100.onnx")):
        return Identity("insightface-pack", "an insightface model-pack folder with an ArcFace ONNX")
    distilled = [p for p in folder.glob("*.safetensors")] + [folder / "unet" / "config.json"]
    if any(p.is_file() for p in distilled) and not (folder / "model_index.json").exists():
        kinds = {_identify_file(p).kind for p in folder.glob("*.safetensors")}
        if (folder / "unet" / "config.json").is_file() or len(kinds) > 1:
            return Identity("sdxl-distilled", "a folder of few-step SDXL weights")
        if len(kinds) == 1:
            only = next(iter(folder.glob("*.safetensors")))
            return _identify_file(only)
    bins = list(folder.glob("ip-adapter*.bin")) + list(folder.glob("ip-adapter*.safetensors"))
    if bins:  # a repository like h94/IP-Adapter-FaceID: say what its FaceID-Plus-v2 file is
        found = [(b, _identify_file(b)) for b in sorted(bins)]
        plus = [(b, i) for b, i in found if i.kind == "ip-adapter-faceid-plus-v2"]
        if plus:
            b, ident = plus[0]
            return Identity(
                ident.kind, f"an IP-Adapter folder whose {b.name} is {ident.description}"
            )
        names = ", ".join(b.name for b in sorted(bins)[:3])
        return Identity("ip-adapter-repo", f"an IP-Adapter folder ({names}) without FaceID-Plus-v2")
    return Identity("unknown", "a folder in no model layout the toolkit knows")


def _header(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes of a safetensors or zip-format PyTorch file, data unread."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        except Exception:  # noqa: BLE001 - a corrupt header
            return None
    if not zipfile.is_zipfile(path):
        return None
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable pickles have many error types
        return None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the LDM / Lightning checkpoint wrapper
    flat: dict[str, tuple[int, ...]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix[:-1]] = tuple(value.shape)

    walk("", state)
    return flat


def _identify_keys(keys: dict[str, tuple[int, ...]], name: str) -> Identity:
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    ldm = "model.diffusion_model.input_blocks.0.0.weight"
    if ldm in keys:
        channels = keys[ldm][1]
        if has("conditioner.embedders.1") or has("model.diffusion_model.label_emb"):
            arch = "sdxl"
        elif has("cond_stage_model.model."):
            arch = "sd2"
        else:
            arch = "sd15"
        ident = _sd_kind(arch, channels, "single-file checkpoint")
        ema = " with an EMA copy" if has("model_ema.") else ""
        return Identity(ident.kind, ident.description[:-1] + ema + ")")
    if has("image_proj.") and has("ip_adapter."):
        proj = [k for k in keys if k.startswith("image_proj.")]
        k_ip = [s for k, s in keys.items() if k.startswith("ip_adapter.") and "to_k_ip" in k]
        width = k_ip[0][-1] if k_ip else 0
        base = {768: "SD1.5", 1024: "SD2", 2048: "SDXL"}.get(
            width, f"a UNet with {width}-wide cross-attention"
        )
        if any("perceiver_resampler" in k for k in proj):
            kind, what = "ip-adapter-faceid-plus-v2", "IP-Adapter FaceID-Plus(-v2)"
        elif "image_proj.proj.0.weight" in keys:
            kind, what = "ip-adapter-faceid", "IP-Adapter FaceID"
        elif "image_proj.latents" in keys:
            kind, what = "ip-adapter-plus", "IP-Adapter Plus"
        else:
            kind, what = "ip-adapter", "IP-Adapter"
        if base in ("SD1.5", "SD2"):
            kind += "-sd15"
        return Identity(kind, f"an {what} checkpoint for {base}")
    if has("double_blocks.") or has("transformer_blocks.0.attn.add_q_proj"):
        return Identity("flux-transformer", "a FLUX transformer checkpoint")
    if "conv_in.weight" in keys and has("down_blocks."):
        arch = "sdxl" if has("add_embedding.") else "sd15"
        ident = _sd_kind(arch, keys["conv_in.weight"][1], "UNet weights")
        return Identity(f"{arch}-unet", ident.description)
    if any("lora" in k for k in keys):
        return Identity("lora", f"LoRA weights ({len(keys)} tensors)")
    if has("cp.resnet.") and "conv_out.conv_out.weight" in keys:
        return Identity("bisenet", "a BiSeNet face-parser checkpoint")
    if has("quantize.embedding") or has("params_ema.quantize") or has("params.quantize"):
        return Identity("codeformer", "a CodeFormer checkpoint")
    if "fc.weight" in keys and has("layer") and (has("features.") or has("prelu")):
        width = keys["fc.weight"][0]
        return Identity("arcface", f"an ArcFace iresnet checkpoint ({width}-d embedding)")
    return Identity("unknown", f"a {name} with tensors in no layout the toolkit knows")


def _identify_file(path: Path) -> Identity:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return Identity("arcface-onnx", "an ONNX model (insightface ArcFace format)")
    if suffix == ".dat":
        return Identity("dlib", "a dlib model file")
    if suffix == ".json":
        return Identity("unknown", "a JSON file, not model weights")
    if suffix not in (".safetensors", ".bin", ".pth", ".pt", ".ckpt"):
        return Identity("unknown", f"a {suffix or 'suffix-less'} file, not a model format")
    keys = _header(path)
    if keys is None:
        if suffix == ".safetensors":
            return Identity("unknown", "a .safetensors file whose header cannot be read")
        return Identity("pickle", f"a {suffix} PyTorch pickle (its layout is checked at load)")
    return _identify_keys(keys, f"{suffix} file")


def identify(path: str | os.PathLike) -> Identity:
    """What the local folder or file at ``path`` is (configs and headers only)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _identify_folder(p)
    if p.is_file():
        return _identify_file(p)
    return Identity("missing", "nothing at that path")


def _configs_of(repo: str) -> Path:
    """The configs of a Hub repo that is not cached (online): only its small JSON files."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, allow_patterns=["*.json", "*/*.json"]))


def resolve_use(use: str) -> Use:
    """The :class:`Use` of a ``--for`` name; an unknown one is one line."""
    name = USE_ALIASES.get(use, use)
    if name not in USES:
        raise InputError(f"--for {use}: unknown use; one of {', '.join(USES)}")
    return USES[name]


def check_model(
    source: str | os.PathLike,
    use: str,
    what: str = "model",
    *,
    how: str | None = None,
    file: str | None = None,
) -> Identity:
    """Check that ``source`` fits ``use`` (a key of :data:`USES`) before anything loads.

    ``source`` is a local folder or file or a Hub id (read from the cache; when not cached
    and the Hub may be reached, only its JSON configs are fetched); ``file`` names the file
    of a folder or repo to check (an adapter's weight file). Returns what it is;
    raises :class:`ModelMismatchError` (it is something else) or
    :class:`~.errors.ModelNotFoundError` (it is not there), each one line naming ``what``.
    """
    spec = resolve_use(use)
    where = locate(source, what, how)
    if isinstance(where, str):  # a Hub id to fetch: read its configs only
        try:
            where = _configs_of(where)
        except Exception:  # noqa: BLE001 - the loader says it when it fetches
            return Identity("hub", f"Hub id {source} (not cached; checked as it loads)")
    if file is not None and Path(where).is_dir():
        if not (Path(where) / file).is_file():
            if isinstance(source, str) and looks_like_hub_id(source) and not hub_offline():
                return Identity("hub", f"Hub id {source} (its {file} is fetched as it loads)")
            from .model_sources import missing_model

            raise missing_model(what, f"{source}/{file}", how or f"give the file {file}")
        where = Path(where) / file
    ident = identify(where)
    if ident.kind in spec.kinds or ident.kind in spec.lenient:
        return ident
    shown = str(source)
    if looks_like_hub_id(shown) and hub_offline() and Path(where) != Path(shown):
        shown += " (from the Hugging Face cache)"
    raise ModelMismatchError(
        f"{what} {shown}: {ident.description}; {use} needs {spec.needs}".lstrip()
    )
