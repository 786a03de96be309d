"""Loading FastFace's models: SDXL base, a few-step family, the FaceID-Plus-v2 adapter, CLIP.

Every source is a local folder or a Hub id (:data:`~.fastface_presets.FAMILIES` lists the
published ones); nothing is fetched at import or in a constructor, and with
``HF_HUB_OFFLINE=1`` a missing model is one line saying what was looked for and how to give
it. The adapter's released ``.bin`` pickle is read once with ``torch.load(weights_only=True)``
and kept as safetensors in the cache folder (:func:`adapter_state_dict`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..components import cache_dir
from ..devices import diffusers_dtype
from ..errors import InputError, ModelNotFoundError, first_line
from ..writer import atomic_write
from .fastface import FastFacePipeline
from .fastface_presets import (
    DEFAULT_ADAPTER,
    DEFAULT_BASE,
    DEFAULT_IMAGE_ENCODER,
    FAMILIES,
)

__all__ = ["adapter_state_dict", "convert_adapter_bin", "load_fastface", "resolve_file"]

#: The scheduler class of a full pipeline folder that tells its family by itself.
_SCHEDULER_FAMILY = {"LCMScheduler": "lcm", "EulerAncestralDiscreteScheduler": "turbo"}


def _first_line(exc: BaseException) -> str:
    return first_line(exc)


def resolve_file(source: str | os.PathLike, filename: str, what: str) -> Path:
    """``source/filename`` from a local folder, or from the Hub (cache first)."""
    from ..model_sources import default_how, locate, missing_model

    how = default_how(source)
    where = locate(source, what, how)
    if not isinstance(where, str):
        if where.is_file():
            return where
        path = where / filename
        if not path.is_file():
            raise missing_model(what, f"{source}/{filename}", how)
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(source), filename))
    except Exception as exc:  # noqa: BLE001 - hub errors have many types
        raise ModelNotFoundError(
            f"{what} {source}/{filename}: could not fetch it from the Hub "
            f"({_first_line(exc)}); {how}"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_adapter_bin(path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert an IP-Adapter ``.bin`` to safetensors once; returns the safetensors file.

    The pickle is read with ``torch.load(weights_only=True)`` (no code runs); keys become
    ``image_proj.*`` / ``ip_adapter.*``, the layout diffusers' ``load_ip_adapter`` reads from a
    safetensors file. The output is named by the source's SHA-256, so it is made once.
    """
    from safetensors.torch import save_file

    src = Path(path)
    folder = Path(out_dir) if out_dir is not None else cache_dir() / "ip_adapter"
    target = folder / f"{src.stem}-{_sha256(src)[:16]}.safetensors"
    if target.is_file():
        return target
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        raise InputError(
            f"{src}: not a readable IP-Adapter checkpoint ({_first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or not {"image_proj", "ip_adapter"} <= set(state):
        raise InputError(f"{src}: an IP-Adapter checkpoint needs 'image_proj' and 'ip_adapter'")
    flat = {
        f"{group}.{key}": tensor.contiguous()
        for group in ("image_proj", "ip_adapter")
        for key, tensor in state[group].items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda p: save_file(flat, str(p), metadata={"source": src.name}))
    return target


def adapter_state_dict(
    source: str | os.PathLike, weight_name: str | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter as diffusers wants it: ``{"image_proj": {...}, "ip_adapter": {...}}``."""
    from safetensors.torch import load_file

    name = weight_name or DEFAULT_ADAPTER[1]
    path = resolve_file(source, name, "--ip-adapter")
    if path.suffix == ".bin":
        path = convert_adapter_bin(path)
    flat = load_file(str(path))
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        group, _, rest = key.partition(".")
        if group in state:
            state[group][rest] = tensor
    if not state["image_proj"] or not state["ip_adapter"]:
        raise InputError(f"{path}: no image_proj/ip_adapter weights (not an IP-Adapter file)")
    return state


def _family_of_folder(folder: Path, family: str | None) -> str:
    if family is not None:
        return family
    index = json.loads((folder / "model_index.json").read_text())
    scheduler = (index.get("scheduler") or [None, None])[1]
    if scheduler in _SCHEDULER_FAMILY:
        return _SCHEDULER_FAMILY[scheduler]
    raise InputError(
        f"--model {folder}: its scheduler ({scheduler}) does not say the family; "
        f"pass --family {'|'.join(FAMILIES)}"
    )


def _from_pretrained(cls: Any, source: str | os.PathLike, what: str, **kwargs: Any) -> Any:
    from ..model_sources import loading_error, locate

    where = locate(source, what)
    try:
        return cls.from_pretrained(str(where), **kwargs)
    except (OSError, ValueError) as exc:
        hub = not Path(str(source)).expanduser().exists()
        raise loading_error(exc, f"{what} {source}: cannot load", hub=hub) from None


def _apply_family(pipe: FastFacePipeline, family: str, source: str, dtype: torch.dtype) -> None:
    """Put the family's distilled weights into the SDXL base (spec §1 table)."""
    import diffusers

    spec = FAMILIES[family]
    if spec.weights == "lora":
        path = resolve_file(source, spec.weight_name, f"{family} LoRA")
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=family)
        pipe.fuse_lora(lora_scale=1.0, adapter_names=[family])
        pipe.unload_lora_weights()
    elif spec.weights == "unet_file":
        from safetensors.torch import load_file

        path = resolve_file(source, spec.weight_name, f"{family} UNet")
        try:
            pipe.unet.load_state_dict(load_file(str(path)))
        except RuntimeError as exc:
            raise InputError(
                f"{path}: not a UNet for this SDXL base ({_first_line(exc)})"
            ) from None
    else:
        unet = _from_pretrained(
            diffusers.UNet2DConditionModel,
            source,
            f"{family} UNet",
            subfolder="unet",
            **diffusers_dtype(dtype),
        )
        pipe.register_modules(unet=unet)
        scheduler_cls = getattr(diffusers, spec.scheduler)
        pipe.scheduler = _from_pretrained(
            scheduler_cls, source, f"{family} scheduler", subfolder="scheduler"
        )
        return
    scheduler_cls = getattr(diffusers, spec.scheduler)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **spec.scheduler_options)


def _set_scheduler(pipe: FastFacePipeline, family: str) -> None:
    import diffusers

    spec = FAMILIES[family]
    cls = getattr(diffusers, spec.scheduler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **spec.scheduler_options)


def load_sdxl_family(
    model: str | os.PathLike,
    *,
    family: str | None = None,
    base: str | os.PathLike | None = None,
    distilled: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    pipeline_class: Any = None,
) -> tuple[Any, str]:
    """``(pipeline, family)``: SDXL in one of the few-step families, without any adapter.

    ``model`` is a family name (SDXL ``base`` plus the family's ``distilled`` weights) or a
    folder of a few-step SDXL pipeline (its family from ``family`` or its scheduler). Used by
    FastFace and by every method that wants a fast SDXL (FaceA-Net's context model).
    ``pipeline_class`` defaults to :class:`FastFacePipeline`.
    """
    import diffusers

    cls = pipeline_class or FastFacePipeline
    name = str(model)
    if name in FAMILIES:
        if family is not None and family != name:
            raise InputError(f"--family {family}: --model {name} is already a family")
        family = name
        pipe = _from_pretrained(cls, base or DEFAULT_BASE, "--base", **diffusers_dtype(dtype))
        _apply_family(pipe, family, str(distilled or FAMILIES[family].source), dtype)
    else:
        from ..model_check import check_model
        from ..model_sources import locate

        how = f"give a family ({', '.join(FAMILIES)}), an SDXL pipeline folder or a Hub id"
        check_model(name, "fastface", "--model", how=how)
        where = locate(name, "--model", how)
        if isinstance(where, str):  # a Hub id to fetch: its index tells the family
            from huggingface_hub import hf_hub_download

            folder = Path(hf_hub_download(name, "model_index.json")).parent
        else:
            folder = where
        if family is not None and family not in FAMILIES:
            raise InputError(f"--family {family}: one of {', '.join(FAMILIES)}")
        family = _family_of_folder(folder, family)
        pipe = _from_pretrained(cls, name, "--model", **diffusers_dtype(dtype))
        if distilled is not None:
            _apply_family(pipe, family, str(distilled), dtype)
        else:
            _set_scheduler(pipe, family)
    if not isinstance(pipe.scheduler, diffusers.SchedulerMixin):
        raise InputError(f"--model {name}: no usable scheduler")
    return pipe, family


def load_fastface(
    model: str | os.PathLike,
    *,
    family: str | None = None,
    base: str | os.PathLike | None = None,
    distilled: str | os.PathLike | None = None,
    ip_adapter: str | os.PathLike | None = None,
    ip_adapter_weight: str | None = None,
    image_encoder: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FastFacePipeline:
    """A ready :class:`FastFacePipeline`.

    Args:
        model: a family name (``hyper``, ``lightning``, ``lcm``, ``turbo``: SDXL base plus
            that family's published weights) or a folder of a full SDXL pipeline that is
            already few-step (its family from ``family`` or from its scheduler).
        family: the family of a folder ``model`` (needed unless its scheduler tells).
        base: SDXL base (folder or Hub id) for a family name (default SDXL base 1.0).
        distilled: where the family's weights are (default: its Hub repo; a local folder
            laid out like the repo works, e.g. ``init-tiny --kind sdxl-distilled``).
        ip_adapter: folder or Hub id of the FaceID-Plus-v2 adapter (default h94/IP-Adapter-FaceID).
        ip_adapter_weight: its file name (default ``ip-adapter-faceid-plusv2_sdxl.bin``).
        image_encoder: CLIP ViT-H/14 vision model, folder or Hub id (default laion's).
        dtype, device: where the models live (CPU fp32 by default; FastFace used fp16).
    """
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    pipe, family = load_sdxl_family(
        model, family=family, base=base, distilled=distilled, dtype=dtype
    )
    encoder_source = image_encoder or DEFAULT_IMAGE_ENCODER
    encoder = _from_pretrained(
        CLIPVisionModelWithProjection, encoder_source, "--image-encoder", dtype=dtype
    )
    try:
        processor = CLIPImageProcessor.from_pretrained(str(encoder_source))
    except OSError:
        size = encoder.config.image_size
        processor = CLIPImageProcessor(size=size, crop_size=size)
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    state = adapter_state_dict(ip_adapter or DEFAULT_ADAPTER[0], ip_adapter_weight)
    state = {g: {k: v.to(dtype) for k, v in part.items()} for g, part in state.items()}
    try:
        pipe.load_faceid_adapter(state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"--ip-adapter: does not fit this SDXL ({_first_line(exc)}); FastFace uses "
            "IP-Adapter FaceID-Plus-v2 for SDXL"
        ) from None
    pipe.family = family
    if device is not None:
        pipe.to(device)
    return pipe
