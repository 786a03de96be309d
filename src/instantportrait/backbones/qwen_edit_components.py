"""Qwen-Image-Edit's components from config: the published settings, and tiny stand-ins.

The tiny bundle (``init-tiny --kind qwen-edit``) is a Qwen-Image MMDiT with one block (2 heads
of 16), a tiny Qwen2.5-VL (one text layer of width 32, a two-block vision tower) whose
byte-level BPE tokenizer is trained here offline with the ``tokenizers`` library and carries
Qwen's chat and vision special tokens, and a tiny ``AutoencoderKLQwenImage``. It carries the real
model's settings where the code reads them: the scheduler (exponential time shift, dynamic
shifting between 256 and 8192 tokens, ``shift_terminal`` 0.02), 64 packed input channels
(16 x 2 x 2) and 16 output channels, no guidance embedding (Qwen-Image-Edit uses true CFG), the
VAE's 16 latent channels with their published per-channel ``latents_mean``/``latents_std`` and
its 8x spatial compression, and the vision processor's patch 14, merge 2, temporal patch 2,
pixel bounds and CLIP normalisation. It is saved as a ``QwenImageEditPipeline`` folder, the
layout of ``Qwen/Qwen-Image-Edit``.

``init-tiny --kind qwen-edit-plus`` writes the same components as a
``QwenImageEditPlusPipeline`` folder, the layout of ``Qwen/Qwen-Image-Edit-2509`` (whose
scheduler, transformer, VAE, encoder and processor settings are the first release's); 2511's
transformer adds ``zero_cond_t`` (``build_qwen_edit_components(zero_cond_t=True)``).

The vision processor is transformers' PIL image processor (``Qwen2VLImageProcessorPil``), so
neither the bundle nor the editor needs torchvision.
"""

from __future__ import annotations

import os
from typing import Any

from .kontext_components import _corpus

__all__ = [
    "QWEN_EDIT_SCHEDULER_CONFIG",
    "QWEN_EDIT_TRANSFORMER_CONFIG",
    "QWEN_IMAGE_VAE_CONFIG",
    "build_qwen_edit_components",
    "qwen2_tokenizer",
    "write_tiny_qwen_edit",
    "write_tiny_qwen_edit_plus",
]

#: Qwen/Qwen-Image-Edit's scheduler/scheduler_config.json (the Qwen-Image family's): an
#: exponential resolution-dependent shift from 0.5 (256 tokens) to 0.9 (8192 tokens), and the
#: schedule stretched so its last sigma is 0.02.
QWEN_EDIT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "invert_sigmas": False,
    "stochastic_sampling": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}

#: Qwen-Image-Edit's transformer/config.json (20B parameters, 60 MMDiT blocks).
QWEN_EDIT_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}

#: Qwen-Image's VAE (vae/config.json): 16 latent channels, per-channel mean and std, 8x.
QWEN_IMAGE_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": [
        -0.7571,
        -0.7089,
        -0.9113,
        0.1075,
        -0.1745,
        0.9653,
        -0.1517,
        1.5508,
        0.4134,
        -0.0715,
        0.5517,
        -0.3632,
        -0.1922,
        -0.9497,
        0.2503,
        -0.2921,
    ],  # fmt: skip
    "latents_std": [
        2.8184,
        1.4541,
        2.3275,
        2.6558,
        1.2196,
        1.7708,
        2.6052,
        2.0743,
        3.2687,
        2.1526,
        2.8652,
        1.5579,
        1.6382,
        1.1253,
        2.8251,
        1.9160,
    ],  # fmt: skip
}

#: Qwen2.5-VL-7B-Instruct (text_encoder/config.json): the text model and the vision tower.
QWEN25_VL_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
QWEN25_VL_VISION_CONFIG: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}

#: The vision processor's settings (processor/preprocessor_config.json, Qwen2.5-VL's): patch 14,
#: 2x2 merge, 2 frames per temporal patch, 3136 to 12845056 pixels, CLIP mean and std.
QWEN_VL_IMAGE_PROCESSOR_CONFIG: dict[str, Any] = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    **QWEN_EDIT_TRANSFORMER_CONFIG,
    "num_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "axes_dims_rope": (4, 6, 6),
}

TINY_VAE_CONFIG: dict[str, Any] = {
    **QWEN_IMAGE_VAE_CONFIG,
    "base_dim": 8,
    "dim_mult": [1, 1, 2, 2],
    "num_res_blocks": 1,
}

TINY_TEXT_CONFIG: dict[str, Any] = {
    **QWEN25_VL_TEXT_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
}

TINY_VISION_CONFIG: dict[str, Any] = {
    **QWEN25_VL_VISION_CONFIG,
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_heads": 2,
    "out_hidden_size": 32,
    "fullatt_block_indexes": [1],
}

#: Qwen2's special tokens the editor's prompt template and the vision processor use, in the
#: real tokenizer's order (its ids start at 151643).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def qwen2_tokenizer(vocab_size: int = 600):
    """A Qwen2-style tokenizer (byte-level BPE with Qwen2's pre-tokenizer, Qwen's chat and
    vision special tokens after the learned vocabulary) trained offline on this package's
    prompt lists and the editor's prompt template, as transformers' ``Qwen2Tokenizer``."""
    import json

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from .qwen_edit import PROMPT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _corpus() + [PROMPT_TEMPLATE.replace("{}", "") for _ in range(4)]
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    qwen = Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, model_max_length=32768, errors="replace"
    )
    qwen.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS]}
    )
    return qwen


def qwen_vl_processor(tokenizer: Any):
    """Qwen2-VL's image-and-text processor (the PIL image processor with the published
    settings, ``tokenizer``); see :mod:`.qwen_vl_processor` for why not transformers' class."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from .qwen_vl_processor import QwenVLImageTextProcessor

    return QwenVLImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil(**QWEN_VL_IMAGE_PROCESSOR_CONFIG),
        tokenizer=tokenizer,
    )


def build_qwen_edit_components(
    size: str = "tiny", seed: int | None = 0, *, zero_cond_t: bool = False
) -> dict[str, Any]:
    """The components of a ``QwenImageEditPipeline`` (or ``QwenImageEditPlusPipeline``):
    ``tiny`` (tests) or ``real`` (the published architecture, random weights: 20B + 7B, for
    FLOP counts on the meta device; far too large to build in memory on a small machine).
    ``zero_cond_t``: Qwen-Image-Edit-2511's transformer flag (the condition image's tokens
    modulated at timestep 0)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ..components import _seeded

    if size not in ("tiny", "real"):
        raise ValueError(f"size {size!r}: tiny or real")
    tiny = size == "tiny"
    tokenizer = qwen2_tokenizer()
    text = dict(TINY_TEXT_CONFIG if tiny else QWEN25_VL_TEXT_CONFIG)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIAL_TOKENS}
    if tiny:
        text["vocab_size"] = len(tokenizer)
    text.update(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vl_config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=TINY_VISION_CONFIG if tiny else QWEN25_VL_VISION_CONFIG,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with _seeded(seed):
        transformer = QwenImageTransformer2DModel(
            **(TINY_TRANSFORMER_CONFIG if tiny else QWEN_EDIT_TRANSFORMER_CONFIG),
            **({"zero_cond_t": True} if zero_cond_t else {}),
        )
        vae = AutoencoderKLQwenImage(**(TINY_VAE_CONFIG if tiny else QWEN_IMAGE_VAE_CONFIG))
        text_encoder = Qwen2_5_VLForConditionalGeneration(vl_config)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_EDIT_SCHEDULER_CONFIG),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "processor": qwen_vl_processor(tokenizer),
        "transformer": transformer.eval(),
    }


def write_tiny_qwen_edit(directory: str | os.PathLike, *, seed: int = 0) -> None:
    """``init-tiny --kind qwen-edit``: a tiny ``QwenImageEditPipeline`` folder in the
    published layout (``model_index.json`` names diffusers' pipeline and transformers'
    ``Qwen2VLProcessor``, so diffusers with torchvision loads it as this toolkit does)."""
    _write_tiny(directory, "QwenImageEditPipeline", seed)


def write_tiny_qwen_edit_plus(directory: str | os.PathLike, *, seed: int = 0) -> None:
    """``init-tiny --kind qwen-edit-plus``: the tiny components as a
    ``QwenImageEditPlusPipeline`` folder, the layout of ``Qwen/Qwen-Image-Edit-2509``."""
    _write_tiny(directory, "QwenImageEditPlusPipeline", seed)


def _write_tiny(directory: str | os.PathLike, pipeline: str, seed: int) -> None:
    import json
    from pathlib import Path

    import diffusers

    cls = getattr(diffusers, pipeline)
    cls(**build_qwen_edit_components("tiny", seed=seed)).save_pretrained(
        str(directory), safe_serialization=True
    )
    index_file = Path(directory) / "model_index.json"
    index = json.loads(index_file.read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
