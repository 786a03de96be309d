"""Write a pipeline as one ``.safetensors`` file in the original Stable Diffusion (LDM) layout.

The inverse of what diffusers' ``from_single_file`` reads: UNet weights under
``model.diffusion_model.``, the VAE under ``first_stage_model.``, the CLIP text encoder under
``cond_stage_model.transformer.``. It serves tools that exchange single files (web UIs,
model hubs) and lets the tests check :meth:`InstantPortraitPipeline.from_single_file`
offline on a checkpoint written here. SD1.x-style UNets (down blocks with resnets and
optional attentions, one mid block) and ``AutoencoderKL`` VAEs are covered.

Checkpoints trained with the LDM/CompVis code (InstructPix2Pix's released
``instruct-pix2pix-00-22000.safetensors`` / ``.ckpt`` among them) hold two UNets: the trained
weights under ``model.diffusion_model.`` and their exponential moving average under
``model_ema.``, each name with its dots removed (:func:`ema_key`). The official code samples
with the EMA copy; :func:`unet_checkpoint` picks either.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EMA_PREFIX",
    "UNET_PREFIX",
    "checkpoint_keys",
    "ema_key",
    "has_ema_unet",
    "original_state_dict",
    "read_checkpoint",
    "save_single_file",
    "unet_checkpoint",
]

#: The UNet's prefix in the LDM layout, and the prefix of its EMA copy.
UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
#: Bookkeeping entries of the LDM EMA (not weights).
_EMA_BOOKKEEPING = {"model_ema.decay", "model_ema.num_updates"}

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _unet_key(key: str, layers: int, n_blocks: int, up_attention: list[bool]) -> str:
    """One diffusers UNet key in the LDM layout (without the prefix)."""
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        k = 1 + i * (layers + 1) + j
        return (
            f"input_blocks.{k}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"input_blocks.{k}.1.{rest}"
        )
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        k = i * (layers + 1) + j
        return (
            f"output_blocks.{k}.0.{_resnet(rest)}"
            if kind == "resnets"
            else f"output_blocks.{k}.1.{rest}"
        )
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        slot = 2 if up_attention[i] else 1
        return f"output_blocks.{i * (layers + 1) + layers}.{slot}.conv.{m[2]}"
    raise ValueError(f"UNet key {key!r} has no place in the original layout")


def _vae_key(key: str, n_blocks: int) -> tuple[str, bool]:
    """One diffusers AutoencoderKL key in the LDM layout; True when it is a mid-attention
    linear weight that the LDM layout stores as a 1x1 convolution."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key, False
    part, _, rest = key.partition(".")
    rest = rest.replace("conv_norm_out.", "norm_out.")
    if m := re.match(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        i = int(m[2]) if m[1] == "down" else n_blocks - 1 - int(m[2])
        tail = m[4].replace("conv_shortcut", "nin_shortcut")
        return f"{part}.{m[1]}.{i}.block.{m[3]}.{tail}", False
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", rest):
        return f"{part}.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", rest):
        return f"{part}.up.{n_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest):
        tail = m[2].replace("conv_shortcut", "nin_shortcut")
        return f"{part}.mid.block_{int(m[1]) + 1}.{tail}", False
    if m := re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)", rest):
        name = _VAE_ATTENTION[m[1]]
        return f"{part}.mid.attn_1.{name}.{m[2]}", name != "norm" and m[2] == "weight"
    return f"{part}.{rest}", False


def ema_key(key: str) -> str:
    """The EMA copy's name of an LDM UNet weight: ``model_ema.`` and the name after ``model.``
    with its dots removed (``model.diffusion_model.input_blocks.0.0.weight`` ->
    ``model_ema.diffusion_modelinput_blocks00weight``), as LDM's ``LitEma`` stores it."""
    if not key.startswith(UNET_PREFIX):
        raise ValueError(f"{key!r} is not a UNet weight ({UNET_PREFIX}...)")
    return EMA_PREFIX + "".join(key.split(".")[1:])


def has_ema_unet(keys: Any) -> bool:
    """Whether a checkpoint with these keys holds an EMA copy of its UNet."""
    return any(k.startswith(EMA_PREFIX) and k not in _EMA_BOOKKEEPING for k in keys)


def checkpoint_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a ``.safetensors`` (its header only) or ``.ckpt`` checkpoint."""
    if str(path).lower().endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    return list(read_checkpoint(path))


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A single-file checkpoint's tensors: safetensors, or a ``.ckpt`` (a foreign format: read
    with ``weights_only=True``, its ``state_dict`` unwrapped as diffusers does)."""
    if str(path).lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state: Any = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (pre-zip) file cannot be memory-mapped
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return state


def unet_checkpoint(state: dict[str, torch.Tensor], *, ema: bool) -> dict[str, torch.Tensor]:
    """The UNet of ``state`` in the LDM layout (``model.diffusion_model.*`` keys): the EMA copy
    (``ema=True``) or the trained weights. Every UNet weight must have its EMA copy."""
    keys = [k for k in state if k.startswith(UNET_PREFIX)]
    if not ema:
        return {k: state[k] for k in keys}
    missing = [k for k in keys if ema_key(k) not in state]
    if missing:
        raise ValueError(
            f"the EMA UNet lacks {len(missing)} of {len(keys)} weights (e.g. {ema_key(missing[0])})"
        )
    return {k: state[ema_key(k)] for k in keys}


def original_state_dict(pipe: Any, ema_unet: Any = None) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder weights in the LDM single-file layout; with
    ``ema_unet`` (a UNet of the same architecture) also its weights as the EMA copy."""
    unet, vae = pipe.unet, pipe.vae
    layers = int(unet.config.layers_per_block)
    n_unet = len(unet.config.block_out_channels)
    up_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        out[UNET_PREFIX + _unet_key(key, layers, n_unet, up_attention)] = value
    if ema_unet is not None:
        for key, value in ema_unet.state_dict().items():
            out[ema_key(UNET_PREFIX + _unet_key(key, layers, n_unet, up_attention))] = value
    n_vae = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        new, as_conv = _vae_key(key, n_vae)
        out["first_stage_model." + new] = value[..., None, None] if as_conv else value
    for key, value in pipe.text_encoder.state_dict().items():
        # The original layout nests CLIP under ``text_model.`` (transformers >= 5.6 flattened
        # CLIPTextModel's own keys).
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def save_single_file(pipe: Any, path: str | os.PathLike, ema_unet: Any = None) -> Path:
    """Write :func:`original_state_dict` to ``path`` (safetensors), atomically."""
    from safetensors.torch import save_file

    from .writer import atomic_write

    tensors = original_state_dict(pipe, ema_unet)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
