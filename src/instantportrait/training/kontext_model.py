"""FLUX.1 Kontext in the DiT trainers: its LoRA targets, pipelines, condition and guidance.

Everything the trainers share (one frozen base, the adapters ``ide``/``student``, the exports,
FSDP2's gathering) is :class:`~instantportrait.training.dit_model.DiTModel`'s; this module is
what FLUX.1 Kontext adds: LoRA on the double and single blocks, the ``FluxKontextPipeline``
folder, the CLIP + T5 condition, the distilled guidance fed as an input on every call (the
student's too), and ``KontextEditPipeline`` as the exported editor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..backbones.flux_kontext import FluxKontextBackbone, KontextCondition
from .dit_model import (
    LORA_FILES,
    METADATA,
    DiTModel,
    flow_training_sigmas,
    fuse_lora_,
    read_export_metadata,
    training_dtype,
)

__all__ = [
    "KontextModel",
    "LORA_FILES",
    "LORA_TARGETS",
    "METADATA",
    "flux_training_sigmas",
    "fuse_lora_",
    "is_kontext_training_export",
    "read_export_metadata",
    "training_dtype",
]

#: PEFT's ``target_modules`` (a full-match regex): attention q/k/v/out (image and text streams)
#: and the MLP projections of the double blocks; q/k/v, the MLP-in and the fused out projection
#: of the single blocks. The transformer's own input/output layers and the norms stay frozen.
LORA_TARGETS = (
    r".*transformer_blocks\.\d+\.("
    r"attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)

#: FLUX's training sigmas (exponential resolution shift): the shared rectified-flow draw
flux_training_sigmas = flow_training_sigmas


def is_kontext_training_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an IDE-Net or IPNet export of the Kontext trainers."""
    return read_export_metadata(folder).get("backbone") == "kontext"


class KontextModel(DiTModel):
    """FLUX.1 Kontext's components with one frozen base transformer and named LoRA adapters
    (see :class:`~instantportrait.training.dit_model.DiTModel` for the arguments)."""

    family = "kontext"
    lora_targets = LORA_TARGETS
    default_guidance = 2.5
    folder_hint = (
        "a FLUX.1 Kontext pipeline folder is needed "
        "(black-forest-labs/FLUX.1-Kontext-dev downloaded, or init-tiny --kind kontext)"
    )

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline

    @classmethod
    def transformer_class(cls) -> type:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    @classmethod
    def lora_pipeline_class(cls) -> type:
        return cls.pipeline_class()

    def make_backbone(self) -> FluxKontextBackbone:
        c = self.components
        return FluxKontextBackbone(
            self.transformer,
            c.get("vae"),
            c.get("text_encoder"),
            c.get("tokenizer"),
            c.get("text_encoder_2"),
            c.get("tokenizer_2"),
        )

    def edit_pipeline(self, transformer: Any, **settings: Any) -> Any:
        from ..pipelines.kontext_edit import KontextEditPipeline

        return KontextEditPipeline(**{**self.components, "transformer": transformer}, **settings)

    def encode_condition(
        self,
        instructions: list[str],
        pixels: torch.Tensor,
        keep: torch.Tensor,
        max_sequence_length: int,
        guided: bool = False,
    ) -> KontextCondition:
        """CLIP's and T5's encodings of the instructions (the image travels on the sequence
        only; guidance is an input, so ``guided`` adds nothing)."""
        return self.backbone.encode_prompt(list(instructions), max_sequence_length)

    def condition_rows(self, cond: KontextCondition, rows: torch.Tensor) -> KontextCondition:
        return KontextCondition(cond.prompt_embeds[rows], cond.pooled[rows], cond.text_ids)

    def validation_kwargs(self, max_sequence_length: int) -> dict[str, Any]:
        return {"max_sequence_length": max_sequence_length}
