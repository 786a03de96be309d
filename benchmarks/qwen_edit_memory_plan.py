"""The training memory plan of InstantPortrait on Qwen-Image-Edit, and its FLOPs, from the real
configs on the meta device (nothing is allocated; runs in seconds on a CPU).

The same rows as :mod:`kontext_memory_plan` (whose helpers it uses), for the 20B MMDiT:

* parameters of the transformer (60 MMDiT blocks), the Qwen2.5-VL-7B encoder and the VAE, and
  of the LoRA adapters at the shipped rank on the trainers' targets
  (``instantportrait.training.qwen_edit_model.qwen_lora_targets``);
* the adapters' optimizer states (AdamW: two fp32 moments), gradients and EMA;
* activations with gradient checkpointing on the transformer blocks: each block's inputs (the
  image and text streams) kept for the backward, plus one block's own saved tensors while it
  is recomputed (a two-block model's saved tensors minus a one-block model's, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` on a meta forward, attention matrices left out
  as the GPU's fused attention does not keep them);
* FSDP2 over N devices: the frozen base and the adapters' states divided by N, plus the
  largest gathered unit (one block) twice (current + prefetched); the VL encoder stays whole;
* FLOPs of one transformer call (torch's FlopCounterMode) at 1024^2 and at the training size,
  the edit image on the sequence.

* the VAE decoder's saved tensors when x0_hat is decoded with gradients (IPNet's pixel-space
  losses; fp32, as the trainers keep the VAE), the causal 3D VAE run on one frame.

    python benchmarks/qwen_edit_memory_plan.py --width 1024 --height 576 --devices 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from kontext_memory_plan import BF16, FP32, GB, count, saved_bytes, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def meta_transformer(rank: int, config: dict | None = None, layers: int | None = None):
    """Qwen-Image-Edit's transformer (``config``, default the published one; ``layers``
    blocks) with one LoRA ``ide`` of ``rank`` on the trainers' targets, on the meta device:
    base bf16, adapter fp32."""
    from accelerate import init_empty_weights
    from diffusers import QwenImageTransformer2DModel
    from peft import LoraConfig

    from instantportrait.backbones.qwen_edit_components import QWEN_EDIT_TRANSFORMER_CONFIG
    from instantportrait.training.qwen_edit_model import qwen_lora_targets

    cfg = dict(config or QWEN_EDIT_TRANSFORMER_CONFIG)
    if layers is not None:
        cfg["num_layers"] = layers
    with init_empty_weights():
        t = QwenImageTransformer2DModel(**cfg).to(torch.bfloat16)
        targets = qwen_lora_targets(cfg["num_layers"])
        lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
        t.add_adapter(lora, adapter_name="ide")
    for n, p in t.named_parameters():
        if "lora_" in n:
            p.data = torch.empty_like(p, dtype=torch.float32, device="meta")
    return t


def inputs(t, img_tokens: int, txt: int, batch: int, h: int, w: int) -> dict:
    dev, dt, c = "meta", torch.bfloat16, t.config
    return {
        "hidden_states": torch.empty(batch, 2 * img_tokens, c.in_channels, device=dev, dtype=dt),
        "timestep": torch.ones(batch, device=dev, dtype=dt),
        "encoder_hidden_states": torch.empty(
            batch, txt, c.joint_attention_dim, device=dev, dtype=dt
        ),
        "img_shapes": [[(1, h, w), (1, h, w)]] * batch,
        "return_dict": False,
    }


def flops(t, h: int, w: int, txt: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        t(**inputs(t, h * w, txt, 1, h, w))
    return fc.get_total_flops()


def block_saved_bytes(rank: int, h: int, w: int, txt: int, batch: int) -> int:
    """Saved tensors of one MMDiT block with its LoRA trainable (bf16 activations): a
    two-block model's minus a one-block model's (both end in a last block, whose text path
    has no LoRA), attention matrices left out."""
    seq = 2 * h * w + txt
    totals = []
    for layers in (2, 1):
        t = meta_transformer(rank, layers=layers)
        for n, p in t.named_parameters():
            p.requires_grad_("lora_" in n)
        x = inputs(t, h * w, txt, batch, h, w)
        x["hidden_states"].requires_grad_(True)
        totals.append(saved_bytes(lambda t=t, x=x: t(**x), t, seq))
    return totals[0] - totals[1]


def checkpoint_kept_bytes(t, img_tokens: int, txt: int, batch: int) -> int:
    """With gradient checkpointing each block keeps its inputs (image and text streams)."""
    width = t.config.num_attention_heads * t.config.attention_head_dim
    return len(t.transformer_blocks) * (2 * img_tokens + txt) * width * batch * BF16


def vae_decode_saved_bytes(width: int, height: int, batch: int) -> int:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLQwenImage

    from instantportrait.backbones.qwen_edit_components import QWEN_IMAGE_VAE_CONFIG

    with init_empty_weights():
        vae = AutoencoderKLQwenImage(**QWEN_IMAGE_VAE_CONFIG)
    z = torch.empty(batch, 16, 1, height // 8, width // 8, device="meta", requires_grad=True)
    return saved_bytes(lambda: vae.decode(z), vae)


def encoder_and_vae_params() -> dict[str, int]:
    from accelerate import init_empty_weights

    from instantportrait.backbones.qwen_edit_components import build_qwen_edit_components

    with init_empty_weights():
        parts = build_qwen_edit_components("real", seed=None)
    return {"qwen2_5_vl": count(parts["text_encoder"]), "vae": count(parts["vae"])}


def plan(width: int, height: int, devices: int, batch: int, rank: int, txt: int) -> dict:
    t = meta_transformer(rank)
    base, lora = count(t, lora=False), count(t, lora=True)
    h, w = height // 16, width // 16
    img_tokens = h * w
    others = encoder_and_vae_params()
    peak_block = block_saved_bytes(rank, h, w, txt, batch)
    kept = checkpoint_kept_bytes(t, img_tokens, txt, batch)
    block_params = count(t.transformer_blocks[0], lora=False)
    rows = {
        "frozen base transformer (bf16)": base * BF16,
        "LoRA ide + student (fp32)": 2 * lora * FP32,
        "student gradients + AdamW states (fp32)": lora * 3 * FP32,
        "student EMA (fp32)": lora * FP32,
        "Qwen2.5-VL-7B encoder (bf16, frozen)": others["qwen2_5_vl"] * BF16,
        "VAE (fp32, frozen)": others["vae"] * FP32,
        "activations: block inputs kept by checkpointing (bf16)": kept,
        "activations: one block recomputed in backward": peak_block,
        "activations: x0_hat decoded with gradients (IPNet, whole image)": vae_decode_saved_bytes(
            width, height, batch
        ),
    }
    sharded = {
        "frozen base transformer (bf16)",
        "LoRA ide + student (fp32)",
        "student gradients + AdamW states (fp32)",
        "student EMA (fp32)",
    }
    per_device = {k: (v / devices if k in sharded else v) for k, v in rows.items()}
    per_device["FSDP: gathered blocks (current + prefetch)"] = 2 * block_params * BF16
    return {
        "width": width,
        "height": height,
        "batch_per_device": batch,
        "devices": devices,
        "lora_rank": rank,
        "text_tokens": txt,
        "image_tokens": img_tokens,
        "parameters": {"transformer": base, "lora_per_adapter": lora, **others},
        "blocks": len(t.transformer_blocks),
        "bytes_one_device": rows,
        "bytes_per_device_fsdp": per_device,
        "total_one_device_gb": sum(rows.values()) / GB,
        "total_per_device_fsdp_gb": sum(per_device.values()) / GB,
        "flops_per_call_1024x1024_tflop": flops(t, 64, 64, txt) / 1e12,
        "flops_per_call_train_size_tflop": flops(t, h, w, txt) / 1e12,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="samples per device")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument(
        "--text-tokens",
        type=int,
        default=768,
        help="the VL condition's length: the edit image's vision tokens (one per 28x28 "
        "pixels: ~740 at 1024x576 for the first release) plus the instruction's",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "qwen_edit_memory_plan.json")
    )
    args = parser.parse_args()
    from diffusers.utils import logging

    logging.set_verbosity_error()  # the meta cast's float32-modules note, once per model
    start = time.perf_counter()
    p = plan(args.width, args.height, args.devices, args.batch, args.rank, args.text_tokens)
    p["seconds"] = time.perf_counter() - start
    print(table(p))
    print(
        f"FLOPs of one transformer call: {p['flops_per_call_1024x1024_tflop']:.1f} TFLOP at "
        f"1024x1024, {p['flops_per_call_train_size_tflop']:.1f} TFLOP at "
        f"{args.width}x{args.height} (edit image on the sequence, {args.text_tokens} text tokens)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(p, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
