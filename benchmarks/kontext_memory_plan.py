"""The training memory plan of InstantPortrait on FLUX.1 Kontext, and its FLOPs, from the real
configs on the meta device (nothing is allocated; runs in seconds on a CPU).

* parameters of every network (FLUX.1 Kontext [dev]'s transformer, T5-XXL, CLIP-L, the VAE),
  and of the LoRA adapters at the shipped rank and targets;
* the adapters' optimizer states (AdamW: two fp32 moments), gradients and EMA;
* activations with gradient checkpointing on the transformer blocks: the block inputs kept
  for the backward (one tensor per block) plus the largest block's own saved tensors while
  it is recomputed, counted with ``torch.autograd.graph.saved_tensors_hooks`` on a meta
  forward; and the VAE decoder's saved tensors when x0_hat is decoded with gradients;
* FSDP FULL_SHARD over N devices: the frozen base and the adapters' states divided by N, plus
  the largest gathered unit (one block) twice (current + prefetched);
* FLOPs of one transformer call (torch's FlopCounterMode): at 1024^2 (spec §8) and at the
  training size, with the edit image on the sequence.

    python benchmarks/kontext_memory_plan.py --width 1024 --height 576 --devices 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3
BF16, FP32 = 2, 4


def saved_bytes(fn, module, skip_square: int | None = None) -> int:
    """Bytes of activations autograd keeps for the backward while ``fn`` runs (meta tensors
    count too). Saved weights of ``module`` are not extra memory and are left out (matched by
    shape, transposes included); ``skip_square``: leave out ``(..., S, S)`` attention
    matrices, which the meta device's math attention keeps but the GPU's flash/memory-efficient
    attention does not (it keeps the output and a log-sum-exp per row)."""
    total = 0
    shapes = set()
    for p in module.parameters():
        shapes.add(tuple(p.shape))
        shapes.add(tuple(reversed(p.shape)))

    def pack(t):
        nonlocal total
        shape = tuple(t.shape)
        if shape in shapes or (skip_square and shape[-2:] == (skip_square, skip_square)):
            return t
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def meta_transformer(rank: int, config: dict | None = None):
    """The transformer (FLUX.1 Kontext [dev]'s ``config`` by default) with one LoRA ``ide`` of
    ``rank`` on the trainers' targets, on the meta device: base bf16, adapter fp32."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    from instantportrait.backbones.kontext_components import KONTEXT_TRANSFORMER_CONFIG
    from instantportrait.training.kontext_model import LORA_TARGETS

    with init_empty_weights():
        t = FluxTransformer2DModel(**(config or KONTEXT_TRANSFORMER_CONFIG)).to(torch.bfloat16)
        cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS)
        t.add_adapter(cfg, adapter_name="ide")
    for n, p in t.named_parameters():  # adapters are fp32 in training
        if "lora_" in n:
            p.data = torch.empty_like(p, dtype=torch.float32, device="meta")
    return t


def count(module, lora: bool | None = None) -> int:
    return sum(
        p.numel() for n, p in module.named_parameters() if lora is None or (("lora_" in n) == lora)
    )


def transformer_inputs(t, img_tokens: int, txt: int, batch: int, grad: bool):
    dev, dt, c = "meta", torch.bfloat16, t.config
    return {
        "hidden_states": torch.empty(batch, 2 * img_tokens, c.in_channels, device=dev, dtype=dt),
        "timestep": torch.ones(batch, device=dev, dtype=dt),
        "guidance": torch.ones(batch, device=dev),
        "pooled_projections": torch.empty(batch, c.pooled_projection_dim, device=dev, dtype=dt),
        "encoder_hidden_states": torch.empty(
            batch, txt, c.joint_attention_dim, device=dev, dtype=dt
        ),
        "txt_ids": torch.zeros(txt, 3, device=dev),
        "img_ids": torch.zeros(2 * img_tokens, 3, device=dev),
        "return_dict": False,
    }


def flops(t, img_tokens: int, txt: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        t(**transformer_inputs(t, img_tokens, txt, 1, False))
    return fc.get_total_flops()


def block_saved_bytes(t, img_tokens: int, txt: int, batch: int) -> dict[str, int]:
    """Saved tensors of one double and one single block (LoRA trainable), bf16 activations."""
    dev, dt = "meta", torch.bfloat16
    seq, head, d = 2 * img_tokens, t.config.attention_head_dim, _width(t)
    rope = (
        torch.empty(seq + txt, head, device=dev, dtype=torch.float32),
        torch.empty(seq + txt, head, device=dev, dtype=torch.float32),
    )
    temb = torch.empty(batch, d, device=dev, dtype=dt)
    hs = torch.empty(batch, seq, d, device=dev, dtype=dt, requires_grad=True)
    enc = torch.empty(batch, txt, d, device=dev, dtype=dt, requires_grad=True)
    double = t.transformer_blocks[0]
    single = t.single_transformer_blocks[0]
    b_double = saved_bytes(
        lambda: double(
            hidden_states=hs, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rope
        ),
        double,
        seq + txt,
    )
    b_single = saved_bytes(
        lambda: single(
            hidden_states=hs, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rope
        ),
        single,
        seq + txt,
    )
    return {"double": b_double, "single": b_single}


def _width(t) -> int:
    return t.config.num_attention_heads * t.config.attention_head_dim


def checkpoint_kept_bytes(t, img_tokens: int, txt: int, batch: int) -> int:
    """With gradient checkpointing each block keeps only its inputs for the backward (double
    blocks: the image and text streams; single blocks: the joint sequence), bf16."""
    seq = 2 * img_tokens
    blocks = len(t.transformer_blocks) + len(t.single_transformer_blocks)
    return blocks * (seq + txt) * _width(t) * batch * BF16


def step_prediction(t, img_tokens: int, txt: int, batch: int, adapters: int) -> dict[str, int]:
    """Bytes on one device of a LoRA training step of the transformer alone (the plan's rows
    for that setting): the frozen bf16 base, ``adapters`` fp32 LoRAs of the size of ``t``'s
    one, the trained adapter's gradients and AdamW moments, and the checkpointed activations.
    Text encoders, VAE, EMA and decoding are left out: the GPU suite's Kontext step cases
    hold none of them, and compare their measured peak with this sum."""
    base, lora = count(t, lora=False), count(t, lora=True)
    blocks = block_saved_bytes(t, img_tokens, txt, batch)
    return {
        "frozen base transformer (bf16)": base * BF16,
        f"LoRA adapters x{adapters} (fp32)": adapters * lora * FP32,
        "trained adapter's gradients + AdamW states (fp32)": lora * 3 * FP32,
        "activations: block inputs kept by checkpointing (bf16)": checkpoint_kept_bytes(
            t, img_tokens, txt, batch
        ),
        "activations: one block recomputed in backward": max(blocks.values()),
    }


def vae_decode_saved_bytes(width: int, height: int, batch: int) -> int:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    from instantportrait.backbones.kontext_components import FLUX_VAE_CONFIG

    with init_empty_weights():
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
    z = torch.empty(batch, 16, height // 8, width // 8, device="meta", requires_grad=True)
    return saved_bytes(lambda: vae.decode(z), vae)


def text_and_vae_params() -> dict[str, int]:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import T5Config, T5EncoderModel

    from instantportrait.backbones.kontext_components import FLUX_VAE_CONFIG, T5_XXL_CONFIG
    from instantportrait.components import CLIP_L_TEXT_CONFIG, _text_encoder

    with init_empty_weights():
        t5 = T5EncoderModel(T5Config(**T5_XXL_CONFIG))
        clip = _text_encoder(CLIP_L_TEXT_CONFIG)
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
    return {"t5_xxl": count(t5), "clip_l": count(clip), "vae": count(vae)}


def plan(width: int, height: int, devices: int, batch: int, rank: int, txt: int) -> dict:
    t = meta_transformer(rank)
    base, lora = count(t, lora=False), count(t, lora=True)
    img_tokens = (height // 16) * (width // 16)
    others = text_and_vae_params()
    blocks = block_saved_bytes(t, img_tokens, txt, batch)
    n_double, n_single = len(t.transformer_blocks), len(t.single_transformer_blocks)
    kept = checkpoint_kept_bytes(t, img_tokens, txt, batch)
    peak_block = max(blocks.values())
    block_params = max(
        count(t.transformer_blocks[0], lora=False), count(t.single_transformer_blocks[0], False)
    )
    vae_full = vae_decode_saved_bytes(width, height, batch)
    per_param_adapter = FP32 * 4  # weights, gradients, AdamW's two moments
    rows = {
        "frozen base transformer (bf16)": base * BF16,
        "LoRA ide + student (fp32)": 2 * lora * FP32,
        "student gradients + AdamW states (fp32)": lora * (per_param_adapter - FP32),
        "student EMA (fp32)": lora * FP32,
        "T5-XXL + CLIP-L (bf16, frozen)": (others["t5_xxl"] + others["clip_l"]) * BF16,
        "VAE (fp32, frozen)": others["vae"] * FP32,
        "activations: block inputs kept by checkpointing (bf16)": kept,
        "activations: one block recomputed in backward": peak_block,
        "activations: x0_hat decoded with gradients (IPNet, whole image)": vae_full,
    }
    sharded = {
        "frozen base transformer (bf16)",
        "LoRA ide + student (fp32)",
        "student gradients + AdamW states (fp32)",
        "student EMA (fp32)",
    }
    per_device = {k: (v / devices if k in sharded else v) for k, v in rows.items()}
    gathered = 2 * block_params * BF16  # FSDP: the current and the prefetched unit, unsharded
    per_device["FSDP: gathered blocks (current + prefetch)"] = gathered
    total_one = sum(rows.values())
    total_dev = sum(per_device.values())
    return {
        "width": width,
        "height": height,
        "batch_per_device": batch,
        "devices": devices,
        "lora_rank": rank,
        "text_tokens": txt,
        "image_tokens": img_tokens,
        "parameters": {"transformer": base, "lora_per_adapter": lora, **others},
        "blocks": {"double": n_double, "single": n_single, "saved_bytes": blocks},
        "bytes_one_device": rows,
        "bytes_per_device_fsdp": per_device,
        "total_one_device_gb": total_one / GB,
        "total_per_device_fsdp_gb": total_dev / GB,
        "flops_per_call_1024x1024_tflop": flops(t, 64 * 64, txt) / 1e12,
        "flops_per_call_train_size_tflop": flops(t, img_tokens, txt) / 1e12,
    }


#: InstantPortrait's schedules (Table 6): steps x global batch; the denoiser-call equivalents
#: of one sample's step with gradient checkpointing (forward 1, backward 2, recompute 1), the
#: teacher's target call (1) and the inversion's Euler calls (4, for sigma' <= tau only: none in
#: the high stage, ~1/201 of the middle stage's draws, all of the low stage's)
SCHEDULE = {
    "idenet": (40000, 256, 4.0),
    "ipnet high": (25000, 256, 4.0 + 1.0),
    "ipnet middle": (15000, 256, 4.0 + 1.0 + 4.0 / 201),
    "ipnet low": (1000, 2048, 4.0 + 1.0 + 4.0),
}


def gpu_hours(call_tflop: float, peak_tflops: float, mfu: float) -> dict:
    """Projected GPU-hours of each stage from the FLOPs of one transformer call at the
    training size (the VAE, text encoders, embedder and discriminator left out)."""
    out = {}
    for name, (steps, batch, calls) in SCHEDULE.items():
        flop = steps * batch * calls * call_tflop * 1e12
        out[name] = {
            "samples": steps * batch,
            "calls_per_sample": calls,
            "flop": flop,
            "gpu_hours": flop / (peak_tflops * 1e12 * mfu) / 3600,
        }
    return out


def table(p: dict) -> str:
    lines = [
        f"| at {p['width']}x{p['height']}, batch {p['batch_per_device']} per device | "
        f"one device | each of {p['devices']} (FSDP) |",
        "|---|---:|---:|",
    ]
    for k, v in p["bytes_per_device_fsdp"].items():
        one = p["bytes_one_device"].get(k)
        lines.append(f"| {k} | {'' if one is None else f'{one / GB:.1f} GB'} | {v / GB:.1f} GB |")
    lines.append(
        f"| **total** | **{p['total_one_device_gb']:.1f} GB** | "
        f"**{p['total_per_device_fsdp_gb']:.1f} GB** |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="samples per device")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "kontext_memory_plan.json")
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation")
    args = parser.parse_args()
    start = time.perf_counter()
    p = plan(args.width, args.height, args.devices, args.batch, args.rank, args.text_tokens)
    p["seconds"] = time.perf_counter() - start
    p["projection"] = {
        "peak_tflops": args.peak_tflops,
        "mfu": args.mfu,
        "stages": gpu_hours(p["flops_per_call_train_size_tflop"], args.peak_tflops, args.mfu),
    }
    print(table(p))
    print("| stage | samples | calls/sample | PFLOP | GPU-hours |\n|---|---:|---:|---:|---:|")
    total = 0.0
    for name, r in p["projection"]["stages"].items():
        total += r["gpu_hours"]
        print(
            f"| {name} | {r['samples']:,} | {r['calls_per_sample']:.2f} | "
            f"{r['flop'] / 1e15:,.0f} | {r['gpu_hours']:,.0f} |"
        )
    print(f"| **all** | | | | **{total:,.0f}** |")
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
