"""Component builders: tiny random models for tests, real-size architectures for benchmarks,
and the CLIP tokenizer built offline.

* ``tiny``: a UNet (8 input channels), a VAE and a CLIP text encoder of one or two blocks and
  widths 16-64, random weights, CPU in well under a second per step. The VAE downsamples by
  8 like the real one, so image sizes mean the same thing at both scales.
* ``sd15`` / ``instruct-pix2pix`` / ``sdxl``: the published configs of Stable Diffusion 1.5,
  InstructPix2Pix (SD1.5 with an 8-channel UNet input: noisy latent || encoded input image)
  and SDXL, with random weights. Speed does not depend on the weights' values.
* :func:`clip_tokenizer`: CLIP's BPE tokenizer (identical ids to SD1.5's, padding with
  end-of-text), built from the vocabulary that ships inside ``open_clip_torch`` without
  importing ``open_clip`` (which needs torchvision).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import MissingDependencyError
from .writer import atomic_write

CLIP_VOCAB_SIZE = 49408
CLIP_BOS, CLIP_EOS = 49406, 49407

#: The scheduler of InstructPix2Pix's published checkpoint (SD1.5's scaled-linear betas).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}

#: stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json (InstructPix2Pix: in_channels 8).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
}

#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

#: The SD1.5 / SDXL VAE (they share the architecture; SDXL's scaling factor is 0.13025).
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: openai/clip-vit-large-patch14 text tower (SD1.5's text encoder; SDXL's first one).
CLIP_L_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": CLIP_BOS,
    "eos_token_id": CLIP_EOS,
    "pad_token_id": 1,
}

#: OpenCLIP ViT-bigG/14 text tower (SDXL's second text encoder, with projection).
CLIP_BIGG_TEXT_CONFIG: dict[str, Any] = {
    **CLIP_L_TEXT_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (16, 16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

TINY_TEXT_CONFIG: dict[str, Any] = {
    **CLIP_L_TEXT_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}

SIZES = ("tiny", "sd15", "instruct-pix2pix", "sdxl")


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed the global RNG for a block without disturbing the caller's RNG state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _bpe_vocabulary_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "CLIP's BPE vocabulary ships in open_clip_torch, which is not installed: "
            "pip install --no-deps open_clip_torch (or pass tokenizer_dir= a saved tokenizer)"
        )
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise MissingDependencyError(f"{path}: CLIP vocabulary missing from open_clip_torch")
    return path


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in CLIP's vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_vocabulary(
    folder: str | os.PathLike, bpe_file: str | os.PathLike | None = None
) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` (Hugging Face CLIP format) from CLIP's BPE file.

    The vocabulary is the 256 byte symbols, the same with ``</w>``, the 48,894 merges, then
    ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49,408 ids, SD1.5's exactly.
    """
    folder = Path(folder)
    source = Path(bpe_file) if bpe_file is not None else _bpe_vocabulary_file()
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = _bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise MissingDependencyError(f"{source}: unexpected CLIP vocabulary size {len(vocab)}")
    data = json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False)
    atomic_write(folder / "vocab.json", lambda p: p.write_text(data, encoding="utf-8"))
    text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    atomic_write(folder / "merges.txt", lambda p: p.write_text(text, encoding="utf-8"))
    return folder


def cache_dir() -> Path:
    """The user's cache folder: ``$INSTANTPORTRAIT_CACHE`` or ``~/.cache/instantportrait``."""
    root = os.environ.get("INSTANTPORTRAIT_CACHE") or Path.home() / ".cache" / "instantportrait"
    return Path(root)


def clip_tokenizer(tokenizer_dir: str | os.PathLike | None = None, model_max_length: int = 77):
    """CLIP's tokenizer built offline (ids identical to SD1.5's; pads with end-of-text).

    Args:
        tokenizer_dir: a folder holding ``vocab.json`` + ``merges.txt`` (e.g. a pipeline's
            ``tokenizer/``); default: built once from open_clip_torch's vocabulary into the
            cache folder.
        model_max_length: the text encoder's context (77 for CLIP).
    """
    from transformers import CLIPTokenizer

    folder = Path(tokenizer_dir) if tokenizer_dir is not None else cache_dir() / "clip_tokenizer"
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        if tokenizer_dir is not None:
            raise MissingDependencyError(f"{folder}: no vocab.json/merges.txt in tokenizer folder")
        write_clip_vocabulary(folder)
    return CLIPTokenizer.from_pretrained(
        str(folder), model_max_length=model_max_length, pad_token="<|endoftext|>"
    )


def _unet(config: dict[str, Any], in_channels: int | None = None):
    from diffusers import UNet2DConditionModel

    cfg = dict(config)
    if in_channels is not None:
        cfg["in_channels"] = in_channels
    return UNet2DConditionModel(**cfg)


def _text_encoder(config: dict[str, Any], with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**config)).eval()


def build_scheduler(kind: str = "euler_ancestral"):
    """InstructPix2Pix's scheduler (``euler_ancestral``), or ddim/ddpm/euler, on SD1.5's betas."""
    import diffusers

    classes = {
        "euler_ancestral": diffusers.EulerAncestralDiscreteScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "ddim": diffusers.DDIMScheduler,
        "ddpm": diffusers.DDPMScheduler,
    }
    if kind not in classes:
        raise ValueError(f"scheduler {kind!r}: one of {', '.join(classes)}")
    return classes[kind](**SD15_SCHEDULER_CONFIG)


def build_components(
    size: str = "tiny", *, seed: int | None = 0, in_channels: int = 8, tokenizer_dir=None
) -> dict[str, Any]:
    """The components of an edit pipeline (vae, text_encoder, tokenizer, unet, scheduler).

    Args:
        size: ``tiny`` (tests), ``instruct-pix2pix`` or ``sd15`` (real SD1.5 size; ``sd15``
            keeps the 4-channel UNet unless ``in_channels`` says otherwise).
        seed: seeds the random weights (``None``: the global RNG as it is).
        in_channels: UNet input channels (8 for InstructPix2Pix-style editing).
        tokenizer_dir: see :func:`clip_tokenizer`.
    """
    from diffusers import AutoencoderKL

    if size not in ("tiny", "sd15", "instruct-pix2pix"):
        raise ValueError(f"size {size!r}: one of tiny, sd15, instruct-pix2pix (sdxl: build_sdxl)")
    tiny = size == "tiny"
    if size == "sd15" and in_channels == 8:
        in_channels = 4
    with _seeded(seed):
        unet = _unet(TINY_UNET_CONFIG if tiny else SD15_UNET_CONFIG, in_channels)
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG))
        text_encoder = _text_encoder(TINY_TEXT_CONFIG if tiny else CLIP_L_TEXT_CONFIG)
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(tokenizer_dir),
        "unet": unet.eval(),
        "scheduler": build_scheduler("euler_ancestral"),
    }


def build_sdxl(*, seed: int | None = 0, with_text_encoders: bool = True) -> dict[str, Any]:
    """SDXL base at real size with random weights (UNet, VAE, two text encoders), for benchmarks."""
    from diffusers import AutoencoderKL

    with _seeded(seed):
        parts: dict[str, Any] = {
            "unet": _unet(SDXL_UNET_CONFIG).eval(),
            "vae": AutoencoderKL(**{**SD_VAE_CONFIG, "scaling_factor": 0.13025}).eval(),
        }
        if with_text_encoders:
            parts["text_encoder"] = _text_encoder(CLIP_L_TEXT_CONFIG)
            parts["text_encoder_2"] = _text_encoder(CLIP_BIGG_TEXT_CONFIG, with_projection=True)
    return parts


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module (Table 1's "Model Size" counts the UNet's)."""
    return sum(p.numel() for p in module.parameters())


def write_tiny_edit(directory: Path, *, seed: int = 0, recommended_steps: int = 1) -> None:
    """``init-tiny --kind edit``: a tiny InstantPortrait pipeline folder for ``edit --model``.

    ``recommended_steps`` 1 makes it act as an IPNet (one step, no guidance), more as an
    IDE-Net (guided multi-step).
    """
    from .pipelines import InstantPortraitPipeline

    extra = (
        {"default_guidance_scale": 1.0, "default_image_guidance_scale": 1.0}
        if recommended_steps == 1
        else {}
    )
    pipe = InstantPortraitPipeline(
        **build_components("tiny", seed=seed), recommended_steps=recommended_steps, **extra
    )
    pipe.save_pretrained(directory)
