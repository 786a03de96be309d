"""FLUX.1 Kontext's components from config: the published settings, and tiny stand-ins.

The tiny bundle (``init-tiny --kind kontext``) is a FLUX transformer with one double and one
single block (2 heads of 16), a tiny CLIP text encoder (pooled width 32), a tiny T5 encoder
(width 32) whose tokenizer is trained here offline with the ``tokenizers`` library, and a
16-channel VAE with FLUX's latent shift and scale. It carries the real model's settings where
the code reads them: the scheduler's dynamic shift (``use_dynamic_shifting``, base/max shift and
sequence lengths), the guidance embedding, 64 packed input channels (16 x 2 x 2), the VAE's
``scaling_factor``/``shift_factor`` and no quant convs. It is saved as a ``FluxKontextPipeline``
folder, the layout of ``black-forest-labs/FLUX.1-Kontext-dev``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: black-forest-labs/FLUX.1-Kontext-dev scheduler/scheduler_config.json.
KONTEXT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

#: FLUX.1 Kontext [dev]'s transformer/config.json (12B parameters).
KONTEXT_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}

#: FLUX's VAE (vae/config.json): 16 latent channels, shift and scale, no quant convs.
FLUX_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

#: T5 v1.1 XXL's encoder (text_encoder_2/config.json).
T5_XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "dense_act_fn": "gelu_new",
}

TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    **KONTEXT_TRANSFORMER_CONFIG,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": (4, 6, 6),
}

TINY_VAE_CONFIG: dict[str, Any] = {
    **FLUX_VAE_CONFIG,
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}

TINY_T5_CONFIG: dict[str, Any] = {
    **T5_XXL_CONFIG,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 1,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
}

#: T5's special tokens at their real ids (pad 0, end 1, unknown 2).
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def _corpus() -> list[str]:
    """A few hundred words of this package's own prompt lists (a fixed, offline corpus)."""
    folder = Path(__file__).resolve().parents[1] / "data" / "prompt_lists"
    lines = []
    for f in sorted(folder.glob("*.txt")):
        lines += [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    lines += ["make it a watercolor painting", "wearing a 1920s flapper dress, feathered headband"]
    return lines


def t5_tokenizer(vocab_size: int = 400):
    """A T5-style tokenizer (SentencePiece-like Unigram, ``</s>`` appended, pad/eos/unk at
    T5's ids) trained offline on :func:`_corpus`, as ``T5TokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(_T5_SPECIALS), unk_token="<unk>"
    )
    tok.train_from_iterator(_corpus(), trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=512,
    )


def build_kontext_components(size: str = "tiny", seed: int | None = 0) -> dict[str, Any]:
    """The components of a ``FluxKontextPipeline``: ``tiny`` (tests) or ``real`` (the
    published architecture, random weights: 12B + T5-XXL, for FLOP counts on the meta
    device; too large to build in memory on a small machine)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from ..components import (
        CLIP_L_TEXT_CONFIG,
        TINY_TEXT_CONFIG,
        _seeded,
        _text_encoder,
        clip_tokenizer,
    )

    if size not in ("tiny", "real"):
        raise ValueError(f"size {size!r}: tiny or real")
    tiny = size == "tiny"
    t5_tok = t5_tokenizer()
    t5_cfg = dict(TINY_T5_CONFIG if tiny else T5_XXL_CONFIG)
    if tiny:
        t5_cfg["vocab_size"] = len(t5_tok)
    with _seeded(seed):
        transformer = FluxTransformer2DModel(
            **(TINY_TRANSFORMER_CONFIG if tiny else KONTEXT_TRANSFORMER_CONFIG)
        )
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else FLUX_VAE_CONFIG))
        text_encoder = _text_encoder(TINY_TEXT_CONFIG if tiny else CLIP_L_TEXT_CONFIG)
        text_encoder_2 = T5EncoderModel(T5Config(**t5_cfg))
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER_CONFIG),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": t5_tok,
        "transformer": transformer.eval(),
    }


def write_tiny_kontext(directory: str | os.PathLike, *, seed: int = 0) -> None:
    """``init-tiny --kind kontext``: a tiny ``FluxKontextPipeline`` folder (diffusers' own
    class in ``model_index.json``, so diffusers and this toolkit load it alike)."""
    from diffusers import FluxKontextPipeline

    FluxKontextPipeline(**build_kontext_components("tiny", seed=seed)).save_pretrained(
        str(directory), safe_serialization=True
    )
