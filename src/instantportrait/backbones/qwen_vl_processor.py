"""Qwen2-VL's processor for images and text, without its video half (so without torchvision).

transformers' ``Qwen2VLProcessor`` holds an image processor, a tokenizer and a video processor,
and its constructor checks each against its base class; the video processor's base class
exists only where torchvision is installed, so the processor cannot be built without it (in
transformers 5.25: ``AttributeError: ... VIDEO_PROCESSOR_MAPPING has no attribute
'_extra_content'``), even though an image edit never uses it. :class:`QwenVLImageTextProcessor`
is the same processor with two parts: transformers' own ``__call__`` (the vision tokens
expanded to ``grid_t * grid_h * grid_w / merge_size**2`` ``<|image_pad|>`` tokens, the
tokenizer, the PIL image processor ``Qwen2VLImageProcessorPil``) runs unchanged. It saves and
loads the published ``processor/`` layout (``processor_class`` stays ``Qwen2VLProcessor``, so
transformers with torchvision reads what this writes).
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

__all__ = ["QwenVLImageTextProcessor"]


class QwenVLImageTextProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with an image processor and a tokenizer only (no video)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **_
    ) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def to_dict(self) -> dict[str, Any]:
        """The saved config, naming transformers' class (the published layout)."""
        out = super().to_dict()
        out["processor_class"] = "Qwen2VLProcessor"
        return out
