"""FastFace's cost at real SDXL size: DCG's three batched branches and AM, per denoising step.

The SDXL UNet is built from its published config with random weights (speed does not depend
on the values), with a real-size IP-Adapter FaceID-Plus-v2 (random, 4 ID tokens of 2048,
CLIP-ViT-H width 1280) loaded through diffusers' ``load_ip_adapter`` path and FastFace's
attention processors installed. Each timed step is :meth:`FastFacePipeline.denoise_step`,
the pipeline's own step (UNet call, guidance, scheduler).

Reported (one run, all ratios from the same run, min over repeats, interleaved):

* ``dcg_achieved_over_ideal``: the UNet's own forward time for a batch of three divided by
  a full DCG step (three branches batched + guidance + rescale + scheduler); goal >= 0.95;
* ``dcg_over_cfg`` (ideal 1.5) and ``dcg_over_no_guidance`` (ideal 3);
* ``am1_over_no_am``, ``am2_over_no_am``: a DCG step with AM over the same step without;
  goal <= 1.05.

Real size needs ~14 GiB of RAM in fp32: run it alone, e.g.
``flock /tmp/realsize.lock python benchmarks/bench_fastface.py --resolution 256``.
On a GPU: ``--device cuda --dtype float16 --resolution 1024`` (images/s and peak memory).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from instantportrait.attention import am_preset
from instantportrait.components import SDXL_UNET_CONFIG, _seeded
from instantportrait.pipelines.fastface import FastFacePipeline
from instantportrait.pipelines.fastface_presets import DCGConfig
from instantportrait.pipelines.fastface_tiny import (
    TINY_SDXL_UNET_CONFIG,
    faceid_plus_v2_state_dict,
)

RESULTS = Path(__file__).resolve().parent / "results"


def build(
    device: torch.device, dtype: torch.dtype, lora: bool, tiny: bool = False
) -> tuple[FastFacePipeline, int]:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    config, clip = (TINY_SDXL_UNET_CONFIG, 32) if tiny else (SDXL_UNET_CONFIG, 1280)
    with _seeded(0):
        unet = UNet2DConditionModel(**config).eval()
        state = faceid_plus_v2_state_dict(unet, clip, lora_rank=128 if lora else None)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
    )
    pipe = FastFacePipeline(
        vae=None,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.register_modules(image_encoder=None, feature_extractor=None)
    layers = pipe.load_faceid_adapter(state)
    pipe.unet.to(device=device, dtype=dtype)
    return pipe, layers


def inputs(pipe: FastFacePipeline, branches: int, resolution: int, device, dtype):
    g = torch.Generator().manual_seed(0)
    cfg = pipe.unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    latents = torch.randn(1, 4, resolution // 8, resolution // 8, generator=g).to(device, dtype)
    added = {
        "text_embeds": torch.randn(branches, pooled, generator=g).to(device, dtype),
        "time_ids": torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]] * branches,
            device=device,
            dtype=dtype,
        ),
        "image_embeds": [torch.randn(branches, 1, 512, generator=g).to(device, dtype)],
    }
    text = torch.randn(branches, 77, cfg.cross_attention_dim, generator=g).to(device, dtype)
    return latents, text, added


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--lora", action="store_true", help="include the adapter's rank-128 LoRA")
    parser.add_argument("--output", default=None)
    parser.add_argument("--tiny", action="store_true", help="smoke run on the tiny SDXL UNet")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    t0 = time.perf_counter()
    pipe, layers = build(device, dtype, args.lora, args.tiny)
    build_s = time.perf_counter() - t0
    pipe.scheduler.set_timesteps(4, device=device)
    t = pipe.scheduler.timesteps[1]
    dcg = DCGConfig()
    feeds = {b: inputs(pipe, b, args.resolution, device, dtype) for b in (1, 2, 3)}
    clip_width = pipe.unet.encoder_hid_proj.image_projection_layers[0].proj_in.in_features
    inputs_clip = {b: torch.randn(b, 1, 257, clip_width).to(device, dtype) for b in (1, 2, 3)}

    def unet_only(b: int):
        latents, text, added = feeds[b]
        pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = inputs_clip[b]
        pipe.unet(
            torch.cat([latents] * b),
            t,
            encoder_hidden_states=text,
            added_cond_kwargs=added,
            return_dict=False,
        )

    def step(b: int, guidance, am: str | None):
        latents, text, added = feeds[b]
        pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = inputs_clip[b]
        pipe.scheduler.set_timesteps(4, device=device)
        with pipe.am_state.active(am_preset(am) if am else None):
            pipe.denoise_step(latents, t, 1, b, text, added, guidance=guidance, baseline=5.0)

    cases = {
        "unet_batch1_no_guidance": lambda: step(1, None, None),
        "cfg_batch2": lambda: step(2, None, None),
        "unet_forward_batch3": lambda: unet_only(3),
        "dcg_batch3": lambda: step(3, (dcg, 1.5, 3.0), None),
        "dcg_am1_batch3": lambda: step(3, (dcg, 1.5, 3.0), "am1"),
        "dcg_am2_batch3": lambda: step(3, (dcg, 1.5, 3.0), "am2"),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    peak: dict[str, int] = {}
    with torch.no_grad():
        for fn in cases.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - start)
                if device.type == "cuda":
                    peak[name] = torch.cuda.max_memory_allocated(device)
                print(f"{name}: {times[name][-1]:.2f}s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "resolution": args.resolution,
        "unet": "SDXL base config, random weights; IP-Adapter FaceID-Plus-v2 real size"
        + (" with rank-128 LoRA" if args.lora else " (LoRA left out)"),
        "ip_layers": layers,
        "ip_layers_targeted_down_up": sum(
            1
            for p in pipe.unet.attn_processors.values()
            if getattr(p, "part", None) in ("down", "up")
        ),
        "build_s": round(build_s, 1),
        "repeats": args.repeats,
        "seconds_min": {k: round(v, 3) for k, v in best.items()},
        "seconds_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "dcg_achieved_over_ideal": round(best["unet_forward_batch3"] / best["dcg_batch3"], 3),
        "dcg_over_cfg": round(best["dcg_batch3"] / best["cfg_batch2"], 3),
        "dcg_over_no_guidance": round(best["dcg_batch3"] / best["unet_batch1_no_guidance"], 3),
        "am1_over_no_am": round(best["dcg_am1_batch3"] / best["dcg_batch3"], 3),
        "am2_over_no_am": round(best["dcg_am2_batch3"] / best["dcg_batch3"], 3),
        "goals": {
            "dcg_achieved_over_ideal": ">= 0.95",
            "dcg_over_cfg": "ideal 1.5",
            "dcg_over_no_guidance": "ideal 3",
            "am_over_no_am": "<= 1.05",
        },
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = {k: round(v / 2**30, 2) for k, v in peak.items()}
        result["images_per_s_4_steps"] = {
            k: round(1 / (4 * best[k]), 3)
            for k in ("unet_batch1_no_guidance", "dcg_batch3", "dcg_am1_batch3", "dcg_am2_batch3")
        }
    out = Path(args.output) if args.output else RESULTS / f"fastface_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key in (
        "dcg_achieved_over_ideal",
        "dcg_over_cfg",
        "dcg_over_no_guidance",
        "am1_over_no_am",
        "am2_over_no_am",
    ):
        print(f"{key}: {result[key]}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
