"""LoRA adapters on FLUX.1 Kontext's transformer: one base in memory, adapters by name.

A 12B transformer cannot be held three times (teacher, student, EMA), so the base stays frozen
and the models the method needs are PEFT LoRA adapters on it, switched by name:

* ``ide`` (IDE-Net, the teacher's fine-tune) and ``student`` (IPNet, initialised from ``ide``)
  are added with :func:`add_adapter`;
* :func:`use_adapter` activates one of them (PEFT's ``set_adapter``), :func:`use_base` turns
  every adapter off (the published teacher), on ONE set of base weights;
* :func:`save_adapter` writes one adapter in the format diffusers' ``load_lora_weights`` reads
  (``FluxKontextPipeline`` and :class:`~instantportrait.pipelines.kontext_edit.
  KontextEditPipeline` alike);
* :func:`export_student` fuses one adapter into the base and saves a one-step student folder
  (``recommended_steps`` 1) that ``edit --model`` runs.

The targets are the attention projections (q, k, v, out, and the text stream's) and the MLP
projections of every double and single block, the layers diffusers' FLUX LoRA training
script adapts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "KONTEXT_LORA_TARGETS",
    "add_adapter",
    "export_student",
    "lora_target_modules",
    "save_adapter",
    "use_adapter",
    "use_base",
]

#: Module-name endings adapted inside each block: attention q/k/v/out (image and text
#: streams) and the MLP projections (double blocks' feed-forwards, single blocks' proj_mlp /
#: proj_out).
KONTEXT_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
)


def lora_target_modules(transformer: torch.nn.Module) -> list[str]:
    """The full names of the linear layers to adapt: those inside a (single) transformer
    block whose name ends with one of :data:`KONTEXT_LORA_TARGETS` (the final ``proj_out``
    and the embedders stay as they are)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    for name, module in transformer.named_modules():
        # a layer adapted already is a PEFT wrapper around its base_layer: name the wrapper
        linear = isinstance(module, (torch.nn.Linear, BaseTunerLayer))
        inner = any(p in name.split(".") for p in ("base_layer", "lora_A", "lora_B"))
        if not linear or inner or "transformer_blocks." not in name:
            continue
        if any(name.endswith("." + t) for t in KONTEXT_LORA_TARGETS):
            names.append(name)
    return names


def add_adapter(
    transformer: Any,
    name: str,
    rank: int = 64,
    *,
    alpha: float | None = None,
    init_from: str | None = None,
    init_lora_weights: bool | str = True,
) -> None:
    """Add the LoRA adapter ``name`` (rank ``rank``, ``lora_alpha`` = ``alpha`` or the rank)
    to ``transformer`` and make it the active one. ``init_from``: copy an existing adapter's
    weights (the student starts as ``ide``); otherwise PEFT's initialisation (``B = 0``: the
    adapter starts as the base)."""
    from peft import LoraConfig

    names = {n for n in getattr(transformer, "peft_config", {}) or {}}
    if name in names:
        raise ValueError(f"adapter {name!r} exists already")
    if init_from is not None and init_from not in names:
        raise ValueError(f"adapter {init_from!r} (init_from) does not exist")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        target_modules=lora_target_modules(transformer),
        init_lora_weights=init_lora_weights,
    )
    transformer.add_adapter(config, adapter_name=name)
    if init_from is not None:
        _copy_adapter(transformer, init_from, name)
    use_adapter(transformer, name)


def _copy_adapter(transformer: torch.nn.Module, source: str, target: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    with torch.no_grad():
        for module in transformer.modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            for part in ("lora_A", "lora_B"):
                table = getattr(module, part)
                if source in table and target in table:
                    table[target].weight.copy_(table[source].weight)


def use_adapter(transformer: Any, name: str) -> None:
    """Make ``name`` the only active adapter (PEFT's ``set_adapter``; the others stay in
    memory, inactive)."""
    transformer.enable_adapters()
    transformer.set_adapter(name)


def use_base(transformer: Any) -> None:
    """Turn every adapter off: the base transformer's output, exactly."""
    transformer.disable_adapters()


def save_adapter(transformer: Any, name: str, directory: str | os.PathLike) -> Path:
    """Write adapter ``name`` as ``DIRECTORY/pytorch_lora_weights.safetensors`` in diffusers'
    FLUX LoRA format (what ``pipe.load_lora_weights(DIRECTORY)`` reads); written to a temporary
    folder first, then renamed."""
    from diffusers import FluxKontextPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(transformer, adapter_name=name)
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        FluxKontextPipeline.save_lora_weights(
            str(tmp), transformer_lora_layers=layers, safe_serialization=True
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out / "pytorch_lora_weights.safetensors"


def export_student(pipe: Any, name: str, directory: str | os.PathLike) -> Path:
    """Fuse adapter ``name`` into the base transformer of ``pipe`` (a ``KontextEditPipeline``)
    and save the one-step student folder (``recommended_steps`` 1) at ``directory``, written
    to a temporary folder first, then renamed. The pipeline's adapters are gone afterwards:
    export last, from a pipeline loaded for it."""
    transformer = pipe.transformer
    use_adapter(transformer, name)
    pipe.fuse_lora(components=["transformer"], adapter_names=[name], lora_scale=1.0)
    pipe.unload_lora_weights()
    pipe.register_to_config(recommended_steps=1)
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
