"""Convert an OpenCLIP / OpenAI-CLIP state dict to a ``transformers.CLIPModel`` folder.

HPS v2 / v2.1 (Wu et al. 2023) are published as OpenCLIP ViT-H-14 checkpoints
(``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``: ``{"state_dict": ...}``); the harness
loads CLIP models through transformers, so convert once::

    python -m instantportrait.evaluation.convert HPS_v2.1_compressed.pt hps-v2.1 --arch ViT-H-14
    instantportrait evaluate ... --metrics hps_v2 --weights hps-v2=hps-v2.1

The checkpoint is read with ``torch.load(weights_only=True)`` (tensors only, no pickled code)
or from ``.safetensors``; the folder is written with safetensors, atomically.

Key layout (OpenAI CLIP, kept by OpenCLIP): ``visual.conv1``, ``visual.class_embedding``,
``visual.positional_embedding``, ``visual.ln_pre``, ``visual.transformer.resblocks.N.{ln_1,
attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``visual.ln_post``,
``visual.proj`` and the same without ``visual.`` for the text tower (``token_embedding``,
``positional_embedding``, ``ln_final``, ``text_projection``), ``logit_scale``. The fused
``in_proj`` is split into q, k, v; projections are transposed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

__all__ = ["ARCHS", "openclip_to_transformers", "transformers_to_openclip", "convert_checkpoint"]

#: Head counts (not recoverable from shapes) and activation per architecture.
ARCHS: dict[str, dict[str, Any]] = {
    "ViT-H-14": {"vision_heads": 16, "text_heads": 16, "act": "gelu"},
    "ViT-g-14": {"vision_heads": 16, "text_heads": 16, "act": "gelu"},
    "ViT-bigG-14": {"vision_heads": 16, "text_heads": 20, "act": "gelu"},
    "ViT-L-14": {"vision_heads": 16, "text_heads": 12, "act": "gelu"},
    "ViT-L-14-openai": {"vision_heads": 16, "text_heads": 12, "act": "quick_gelu"},
    "ViT-B-32": {"vision_heads": 12, "text_heads": 8, "act": "gelu"},
    "ViT-B-16": {"vision_heads": 12, "text_heads": 8, "act": "gelu"},
}

_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _layers(sd: dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def _config(sd: dict[str, torch.Tensor], arch: dict[str, Any]):
    from transformers import CLIPConfig

    vw = sd["visual.conv1.weight"]
    width, patch = int(vw.shape[0]), int(vw.shape[-1])
    grid = int(round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1)))
    tw = int(sd["token_embedding.weight"].shape[1])
    return CLIPConfig(
        text_config=dict(
            vocab_size=int(sd["token_embedding.weight"].shape[0]),
            hidden_size=tw,
            intermediate_size=int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            num_hidden_layers=_layers(sd, ""),
            num_attention_heads=int(arch["text_heads"]),
            max_position_embeddings=int(sd["positional_embedding"].shape[0]),
            hidden_act=arch["act"],
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            num_hidden_layers=_layers(sd, "visual."),
            num_attention_heads=int(arch["vision_heads"]),
            image_size=grid * patch,
            patch_size=patch,
            hidden_act=arch["act"],
        ),
        projection_dim=int(sd["text_projection"].shape[1]),
    )


def _tower(sd: dict[str, torch.Tensor], src: str, dst: str, n: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for i in range(n):
        s, d = f"{src}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
        for a, b in _BLOCK.items():
            for p in ("weight", "bias"):
                out[f"{d}{b}.{p}"] = sd[f"{s}{a}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = sd[f"{s}attn.in_proj_{p}"].chunk(3, dim=0)
            out[f"{d}self_attn.q_proj.{p}"] = q
            out[f"{d}self_attn.k_proj.{p}"] = k
            out[f"{d}self_attn.v_proj.{p}"] = v
    return out


def openclip_to_transformers(
    state_dict: dict[str, torch.Tensor], arch: str | dict[str, Any] = "ViT-H-14"
):
    """A ``transformers.CLIPModel`` holding an OpenCLIP / OpenAI-CLIP state dict.

    ``arch``: a key of :data:`ARCHS` or a dict ``{"vision_heads", "text_heads", "act"}``.
    """
    from transformers import CLIPModel

    if isinstance(arch, str) and arch not in ARCHS:
        raise InputError(f"arch: one of {', '.join(ARCHS)}; got {arch!r}")
    spec = ARCHS[arch] if isinstance(arch, str) else dict(arch)
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    needed = ("visual.conv1.weight", "token_embedding.weight", "text_projection", "visual.proj")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise InputError(f"not an OpenCLIP state dict: no {missing[0]!r}")
    config = _config(sd, spec)
    new: dict[str, torch.Tensor] = {}
    t, v = "text_model.", "vision_model."
    new[f"{t}embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    new[f"{t}embeddings.position_embedding.weight"] = sd["positional_embedding"]
    new.update(_tower(sd, "", t, config.text_config.num_hidden_layers))
    new[f"{t}final_layer_norm.weight"] = sd["ln_final.weight"]
    new[f"{t}final_layer_norm.bias"] = sd["ln_final.bias"]
    new["text_projection.weight"] = sd["text_projection"].T
    new[f"{v}embeddings.class_embedding"] = sd["visual.class_embedding"]
    new[f"{v}embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    new[f"{v}embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    new[f"{v}pre_layrnorm.weight"] = sd["visual.ln_pre.weight"]
    new[f"{v}pre_layrnorm.bias"] = sd["visual.ln_pre.bias"]
    new.update(_tower(sd, "visual.", v, config.vision_config.num_hidden_layers))
    new[f"{v}post_layernorm.weight"] = sd["visual.ln_post.weight"]
    new[f"{v}post_layernorm.bias"] = sd["visual.ln_post.bias"]
    new["visual_projection.weight"] = sd["visual.proj"].T
    new["logit_scale"] = sd.get("logit_scale", torch.tensor(math.log(100.0))).reshape(())
    model = CLIPModel(config)
    own = model.state_dict()
    absent = [k for k in own if k not in new and not k.endswith("position_ids")]
    if absent:
        raise InputError(f"OpenCLIP conversion: no value for {absent[0]!r}")
    model.load_state_dict({k: v.contiguous().float() for k, v in new.items()}, strict=False)
    return model.eval()


def transformers_to_openclip(model) -> dict[str, torch.Tensor]:
    """The inverse mapping (tests and round trips): a CLIPModel as an OpenCLIP state dict."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for src, dst, n in (
        ("text_model.", "", model.config.text_config.num_hidden_layers),
        ("vision_model.", "visual.", model.config.vision_config.num_hidden_layers),
    ):
        for i in range(n):
            s, d = f"{src}encoder.layers.{i}.", f"{dst}transformer.resblocks.{i}."
            for a, b in _BLOCK.items():
                for p in ("weight", "bias"):
                    out[f"{d}{a}.{p}"] = sd[f"{s}{b}.{p}"]
            for p in ("weight", "bias"):
                out[f"{d}attn.in_proj_{p}"] = torch.cat(
                    [sd[f"{s}self_attn.{x}_proj.{p}"] for x in "qkv"], dim=0
                )
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    out["ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out["ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"visual.{a}.{p}"] = sd[f"vision_model.{b}.{p}"]
    out["visual.proj"] = sd["visual_projection.weight"].T
    out["logit_scale"] = sd["logit_scale"]
    return {k: v.clone() for k, v in out.items()}


def convert_checkpoint(
    source: str | os.PathLike, destination: str | os.PathLike, arch: str = "ViT-H-14"
) -> Path:
    """Read an OpenCLIP checkpoint (``.pt`` with ``weights_only`` or ``.safetensors``) and
    save it as a transformers CLIPModel folder (safetensors), atomically."""
    from ..faces.embedders import read_state_dict
    from ..writer import atomic_directory

    model = openclip_to_transformers(read_state_dict(source, "OpenCLIP"), arch)
    with atomic_directory(destination, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(destination)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="OpenCLIP checkpoint (.pt/.pth/.safetensors)")
    parser.add_argument("destination", help="output folder (transformers CLIPModel)")
    parser.add_argument("--arch", default="ViT-H-14", choices=sorted(ARCHS))
    args = parser.parse_args(argv)
    print(convert_checkpoint(args.source, args.destination, args.arch))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
