"""Qwen-Image-Edit in the DiT trainers: its LoRA targets, pipelines, condition and guidance.

Everything the trainers share is :class:`~instantportrait.training.dit_model.DiTModel`'s; this
module is what Qwen-Image-Edit (the first release, or 2509/2511 through diffusers'
``QwenImageEditPlusPipeline`` folder) adds:

* LoRA on every MMDiT block's joint attention (image stream ``to_q/to_k/to_v/to_out.0``, text
  stream ``add_q_proj/add_k_proj/add_v_proj/to_add_out``) and both MLPs (``img_mlp`` and
  ``txt_mlp``: ``net.0.proj`` and ``net.2``), but not on the last block's text-output path,
  which cannot reach the prediction (:func:`qwen_lora_targets`); the modulation layers, norms
  and the transformer's input/output layers stay frozen;
* the condition is Qwen2.5-VL's reading of the instruction WITH the edit image (the backbone's
  :meth:`~instantportrait.backbones.qwen_edit.QwenEditBackbone.encode_prompt`). A dropped
  instruction is the empty prompt encoded with the image; a dropped image is zeroed latents on
  the sequence (as Kontext) and a mid-grey image (0 in [-1, 1]) for the VL encoder, so neither
  path carries the input;
* there is no guidance input: the teacher is guided by true CFG (a second call with the
  negative prompt, :func:`~instantportrait.backbones.qwen_edit.true_cfg`), the flow-matching
  loss and the student run one unguided call (:meth:`QwenEditModel.unguided`);
* the exported editor is :class:`~instantportrait.pipelines.qwen_edit.QwenEditPipeline`: the
  IDE-Net with the teacher's true CFG and steps, the student with one step and CFG off.
"""

from __future__ import annotations

from typing import Any

import torch

from ..backbones.qwen_edit import QwenEditBackbone, QwenEditCondition, condition_image_size
from .dit_model import DiTModel

__all__ = ["QwenEditModel", "pixels_to_pil", "qwen_lora_targets"]

#: the adapted linears of a block: joint attention (image stream, then text stream) and MLPs
_ATTENTION = r"attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
_MLPS = r"img_mlp\.net\.(0\.proj|2)|txt_mlp\.net\.(0\.proj|2)"
#: the last block's: its text stream's output is discarded (only the image tokens go on to
#: the output layer), so the text queries, text out-projection and text MLP there cannot
#: change the prediction; a LoRA on them would never get a gradient (and DDP refuses
#: parameters that get none)
_LAST_ATTENTION = r"attn\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)"
_LAST_MLPS = r"img_mlp\.net\.(0\.proj|2)"


def qwen_lora_targets(num_layers: int) -> str:
    """PEFT's ``target_modules`` (a full-match regex) on diffusers'
    ``QwenImageTransformer2DModel`` with ``num_layers`` blocks: every block's attention
    (``to_q/to_k/to_v/to_out.0``, ``add_q_proj/add_k_proj/add_v_proj/to_add_out``) and MLPs
    (``img_mlp``/``txt_mlp``: ``net.0.proj``, ``net.2``), except the last block's text-output
    path (``add_q_proj``, ``to_add_out``, ``txt_mlp``), which does not reach the output."""
    last = int(num_layers) - 1
    return (
        rf".*transformer_blocks\.(?!{last}\.)\d+\.({_ATTENTION}|{_MLPS})"
        rf"|.*transformer_blocks\.{last}\.({_LAST_ATTENTION}|{_LAST_MLPS})"
    )


def pixels_to_pil(pixels: torch.Tensor) -> list:
    """``(B, 3, H, W)`` in [-1, 1] -> RGB PIL images (what the VL processor reads)."""
    from PIL import Image

    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


class QwenEditModel(DiTModel):
    """Qwen-Image-Edit's components with one frozen base transformer and named LoRA adapters
    (see :class:`~instantportrait.training.dit_model.DiTModel` for the arguments).

    ``plus``: the 2509/2511 conditioning (the ``Picture 1:`` template and the ~384 x 384 VL
    image), read from the pretrained folder."""

    family = "qwen-edit"
    default_guidance = 4.0  # the model card's true_cfg_scale
    folder_hint = (
        "a Qwen-Image-Edit pipeline folder is needed (Qwen/Qwen-Image-Edit, -2509 or -2511 "
        "downloaded, or init-tiny --kind qwen-edit)"
    )
    #: the negative prompt of the guided teacher (the model card's)
    negative_prompt = " "

    def __init__(self, components: dict[str, Any], *args: Any, plus: bool = False, **kw: Any):
        self.plus = bool(plus)
        super().__init__(components, *args, **kw)

    @property
    def lora_targets(self) -> str:  # type: ignore[override]
        """:func:`qwen_lora_targets` for this transformer's block count."""
        return qwen_lora_targets(self.transformer.config.num_layers)

    @classmethod
    def from_pipeline(cls, pipe: Any, device: torch.device, rank: int, **kw: Any) -> DiTModel:
        return cls(pipe.components, device, rank, plus=bool(pipe.config.plus), **kw)

    @classmethod
    def pipeline_class(cls) -> type:
        from ..pipelines.qwen_edit import QwenEditPipeline

        return QwenEditPipeline

    @classmethod
    def transformer_class(cls) -> type:
        from diffusers import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel

    @classmethod
    def lora_pipeline_class(cls) -> type:
        from diffusers import QwenImageEditPipeline

        return QwenImageEditPipeline

    def make_backbone(self) -> QwenEditBackbone:
        c = self.components
        return QwenEditBackbone(
            self.transformer,
            c.get("vae"),
            c.get("text_encoder"),
            c.get("tokenizer"),
            c.get("processor"),
            plus=self.plus,
        )

    def edit_pipeline(self, transformer: Any, **settings: Any) -> Any:
        from ..pipelines.qwen_edit import PLUS_TEACHER_STEPS, QwenEditPipeline

        if self.plus:
            settings.setdefault("recommended_steps", PLUS_TEACHER_STEPS)
        parts = {**self.components, "transformer": transformer}
        return QwenEditPipeline(**parts, plus=self.plus, **settings)

    def export_settings(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The IDE-Net: the teacher's steps and true-CFG scale; the student: one step with CFG
        off (``default_guidance_scale`` 1), since it distilled the guided teacher."""
        settings = super().export_settings(metadata)
        if metadata.get("kind") == "ipnet":
            settings["default_guidance_scale"] = 1.0
        return settings

    def encode_condition(
        self,
        instructions: list[str],
        pixels: torch.Tensor,
        keep: torch.Tensor,
        max_sequence_length: int,
        guided: bool = False,
    ) -> QwenEditCondition:
        """Qwen2.5-VL's encoding of each instruction with its edit image (mid-grey where the
        image is dropped; the ~384 x 384 condition image for ``plus``); ``guided``: with the
        negative prompt's encoding for true CFG. ``max_sequence_length`` is Kontext's T5
        setting: the VL encoder reads the whole prompt."""
        keep = keep.to(pixels.device).view(-1, 1, 1, 1)
        images = pixels_to_pil(pixels * keep.to(pixels))
        if self.plus:
            from PIL import Image

            lanczos = Image.Resampling.LANCZOS  # diffusers' resize
            images = [im.resize(condition_image_size(*im.size), lanczos) for im in images]
        negatives = [self.negative_prompt] * len(images) if guided else None
        return self.backbone.encode_prompt(list(instructions), images, negatives)

    def unguided(self, cond: QwenEditCondition) -> QwenEditCondition:
        return QwenEditCondition(cond.prompt_embeds, cond.mask, None)

    def condition_rows(self, cond: QwenEditCondition, rows: torch.Tensor) -> QwenEditCondition:
        return QwenEditCondition(
            cond.prompt_embeds[rows],
            None if cond.mask is None else cond.mask[rows],
            None if cond.negative is None else self.condition_rows(cond.negative, rows),
        )
