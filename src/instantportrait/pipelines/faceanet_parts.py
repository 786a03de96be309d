"""What FaceA-Net's tuning and generation share: the inpainting model G_id and its loading,
the 9-channel UNet input, the LoRA set-up, and the tuned identity's files.

A tuned identity is a folder holding

* ``pytorch_lora_weights.safetensors``: the UNet LoRA, PEFT keys under ``unet.`` (the format
  diffusers' ``load_lora_weights`` reads), its rank/alpha/targets in the file's metadata;
* ``feat_embeddings/``: the ``[feat]`` vectors (:class:`FeatEmbeddings`, safetensors + config);
* ``faceanet.json``: gender, n, the base inpainting model, steps, the crop scale, tuning time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, ModelNotFoundError
from ..models.feat_embeddings import FeatEmbeddings

LORA_FILE = "pytorch_lora_weights.safetensors"
FEAT_DIR = "feat_embeddings"
META_FILE = "faceanet.json"
ADAPTER = "faceanet"
#: the paper's recommended G_id (SD-1.5 inpainting; this maintained mirror replaces the
#: removed runwayml repository); any 9-channel SD inpainting model works.
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-inpainting"
#: how to provide G_id, in every "not found" line.
BASE_HOW = (
    f"give a local SD-inpainting folder or a Hub id such as {DEFAULT_BASE} (`hf download "
    f"{DEFAULT_BASE}` on a connected machine fills the cache), or `init-tiny --kind inpaint` "
    "for a test model"
)

#: tiny SD-inpainting UNet (9 input channels: noisy latent 4 + mask 1 + masked-image latent 4)
TINY_INPAINT_IN_CHANNELS = 9


def inpaint_unet_input(
    z_t: torch.Tensor, mask: torch.Tensor, masked_image_latents: torch.Tensor
) -> torch.Tensor:
    """SD-inpainting's UNet input ``cat[z_t, m (latent size), E(s * (1 - m))]`` (9 channels).

    ``mask`` ``(B, 1, H, W)`` at image size is nearest-downsampled to the latents' size.
    """
    m = torch.nn.functional.interpolate(mask.to(z_t), size=z_t.shape[-2:], mode="nearest")
    return torch.cat([z_t, m, masked_image_latents.to(z_t)], dim=1)


def masked_image(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``s * (1 - m)`` for images in [-1, 1] and a {0, 1} mask (masked pixels become 0)."""
    return images * (1.0 - mask.to(images))


def load_inpaint_components(base: str, seed: int = 0, what: str = "--base") -> dict[str, Any]:
    """vae, text_encoder, tokenizer, unet (9 channels), scheduler (DDIM) of an SD-inpainting model.

    ``base``: a diffusers folder or Hub id (``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``unet/``, ``scheduler/``; a Hub id is read from the Hugging Face cache when offline);
    ``tiny`` (tests) or ``random-real`` (SD-1.5-inpainting architecture with random weights,
    for benchmarks). Its layout is checked (9 input channels) before any weight loads;
    ``what`` names the option in the one-line errors.
    """
    from diffusers import DDIMScheduler

    if base in ("tiny", "random-real"):
        from ..components import SD15_SCHEDULER_CONFIG, build_components

        parts = build_components(
            "tiny" if base == "tiny" else "sd15", seed=seed, in_channels=TINY_INPAINT_IN_CHANNELS
        )
        parts["scheduler"] = DDIMScheduler(**SD15_SCHEDULER_CONFIG)
        return {k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    from .sd_parts import load_sd_parts

    parts = load_sd_parts(base, "faceanet", what, BASE_HOW)
    return {k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}


def add_lora(unet, rank: int, alpha: float, targets: list[str], adapter: str = ADAPTER) -> None:
    """Add a trainable PEFT LoRA adapter on the UNet's attention projections."""
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True),
        adapter_name=adapter,
    )


def lora_state_dict(unet, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT keys (adapter name stripped)."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(unet, adapter_name=adapter)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_identity(
    folder: str | os.PathLike,
    unet,
    feats: FeatEmbeddings | None,
    meta: dict[str, Any],
    adapter: str = ADAPTER,
) -> Path:
    """Write the LoRA, the ``[feat]`` vectors and ``faceanet.json`` into ``folder``."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sd = {f"unet.{k}": v for k, v in lora_state_dict(unet, adapter).items()}
    lora_meta = {
        "format": "pt",
        "lora_rank": str(meta["lora_rank"]),
        "lora_alpha": str(meta["lora_alpha"]),
        "lora_targets": json.dumps(meta["lora_targets"]),
    }
    save_file(sd, str(out / LORA_FILE), metadata=lora_meta)
    if feats is not None:
        feats.save_pretrained(out / FEAT_DIR)
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def identity_folder(path: str | os.PathLike) -> Path:
    """The folder of a tuned identity: ``path`` itself, or its ``final/`` (a run folder)."""
    p = Path(path)
    for cand in (p, p / "final"):
        if (cand / META_FILE).is_file():
            return cand
    raise ModelNotFoundError(
        f"{p}: no tuned FaceA-Net identity here (looked for {META_FILE} in it and in final/); "
        "create one with `instantportrait train faceanet --images ... -o RUN`"
    )


#: the keys of ``faceanet.json`` generation and continued tuning need, with their types
META_KEYS: dict[str, type | tuple[type, ...]] = {
    "gender": str,
    "num_vectors": int,
    "base": str,
    "lora_rank": int,
    "lora_alpha": (int, float),
    "lora_targets": list,
    "resolution": int,
    "face_ratio": (int, float),
}


def read_identity_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``faceanet.json`` of a tuned identity, checked: one clear line when it is not JSON or
    lacks a key (:data:`META_KEYS`)."""
    file = identity_folder(path) / META_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: not a readable FaceA-Net identity file ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{file}: not a FaceA-Net identity file (a JSON object is expected)")
    for key, kind in META_KEYS.items():
        value = meta.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise InputError(
                f"{file}: {key!r} is missing or malformed; the identity is damaged, tune it "
                "again with `instantportrait train faceanet`"
            )
    if meta["gender"] not in ("man", "woman") or meta["face_ratio"] <= 0:
        raise InputError(f"{file}: gender / face_ratio out of range; tune the identity again")
    return meta


def load_identity(
    path: str | os.PathLike, unet, adapter: str = ADAPTER
) -> tuple[FeatEmbeddings | None, dict[str, Any]]:
    """Add the identity's LoRA to ``unet`` (as adapter ``adapter``) and load its vectors.

    Returns ``(feats or None when tuned without embeddings, meta)``.
    """
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = identity_folder(path)
    meta = read_identity_meta(folder)
    device = next(unet.parameters()).device
    lora = folder / LORA_FILE
    try:
        raw = load_file(str(lora), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{lora}: not a readable LoRA file ({reason})") from None
    sd = {k[len("unet.") :]: v for k, v in raw.items() if k.startswith("unet.")}
    if not sd:
        raise InputError(f"{lora}: holds no UNet LoRA weights (no key starts with 'unet.')")
    add_lora(unet, meta["lora_rank"], meta["lora_alpha"], meta["lora_targets"], adapter)
    try:
        result = set_peft_model_state_dict(unet, sd, adapter_name=adapter)
    except RuntimeError as exc:  # shapes that do not fit the recorded rank
        unet.delete_adapters(adapter)
        reason = str(exc).splitlines()[-1].strip()
        raise InputError(f"{lora}: does not fit faceanet.json's LoRA ({reason})") from None
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        unet.delete_adapters(adapter)
        raise InputError(f"{lora}: keys that fit no LoRA layer, e.g. {unexpected[0]}")
    feats = None
    if (folder / FEAT_DIR).is_dir():
        try:
            feats = FeatEmbeddings.from_pretrained(folder / FEAT_DIR).to(device)
        except Exception as exc:  # noqa: BLE001 - diffusers raises many types for bad files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{folder / FEAT_DIR}: unreadable [feat] vectors ({reason})") from None
        want = (len(meta.get("tasks", [None] * 5)), meta["num_vectors"])
        if tuple(feats.vectors.shape[:2]) != want:
            raise InputError(
                f"{folder / FEAT_DIR}: vectors of shape {tuple(feats.vectors.shape)} do not fit "
                f"faceanet.json (tasks x num_vectors = {want[0]} x {want[1]})"
            )
    return feats, meta
