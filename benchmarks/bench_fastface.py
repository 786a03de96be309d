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

``--components`` times only what FastFace adds (AM's IP branch against stock SDPA at SDXL's
layer shapes, interleaved per repeat; DCG's tail), and turns it into ratios over the UNet's
batch-3 forward, given (``--unet-batch3-s``) or timed in the same loop (``--unet-every N``).

Real size needs ~14 GiB of RAM in fp32: run it alone, e.g.
``flock /tmp/realsize.lock python benchmarks/bench_fastface.py --resolution 256``.
On a GPU: ``--device cuda --dtype float16 --resolution 1024`` (images/s and peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
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


#: SDXL's IP cross-attention layers under AM (down/up): (count, heads, queries at 1024^2).
SDXL_AM_LAYERS = ((10, 10, 4096), (50, 20, 1024))


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _spread(values: list[float], digits: int = 5) -> dict:
    """Median, quartiles and range of repeated measurements."""
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": round(med, digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def component_costs(resolution: int, repeats: int = 20, unet_forward=None, unet_every: int = 0):
    """The work FastFace adds, timed alone at SDXL's real layer shapes (little memory, low
    noise): AM's IP branch vs stock SDPA over the 60 down/up layers, and DCG's guidance +
    rescale + scheduler step on the latents, for a batch of three.

    The three IP-branch cases (stock SDPA, AM1, AM2) are interleaved within each repeat, so
    a repeat's ``AM - SDPA`` difference is taken under one machine load; medians and spread
    of those paired differences are reported. With ``unet_forward`` (the real-size UNet's
    batch-3 forward), it is timed in the same loop every ``unet_every`` repeats, and each such
    repeat gives a paired ratio ``1 + (AM - SDPA) / UNet``.
    """
    import torch.nn.functional as F
    from diffusers import EulerDiscreteScheduler

    from instantportrait.attention import manipulated_ip_attention
    from instantportrait.guidance import decoupled_guidance

    g = torch.Generator().manual_seed(0)
    scale = (resolution / 1024) ** 2
    out: dict = {"resolution": resolution, "repeats": repeats, "per_step_extra_s": {}}
    layers = []
    for count, heads, queries in SDXL_AM_LAYERS:
        q = torch.randn(3, heads, max(1, int(queries * scale)), 64, generator=g)
        k = torch.randn(3, heads, 4, 64, generator=g)
        v = torch.randn(3, heads, 4, 64, generator=g)
        layers.append((count, q, k, v))
    presets = {"am1": am_preset("am1"), "am2": am_preset("am2")}

    def ip_branch(name: str):
        def call(q, k, v):
            if name == "sdpa":
                return F.scaled_dot_product_attention(q, k, v)
            return manipulated_ip_attention(q, k, v, presets[name], "down", 1)

        def run() -> float:  # one call per layer shape, times its layer count
            total = 0.0
            for count, q, k, v in layers:
                start = time.perf_counter()
                call(q, k, v)
                total += count * (time.perf_counter() - start)
            return total

        return run

    cases = {name: ip_branch(name) for name in ("sdpa", "am1", "am2")}
    times: dict[str, list[float]] = {name: [] for name in cases}
    unet: dict[int, float] = {}
    with torch.no_grad():
        for run in cases.values():  # warm-up
            run()
        for r in range(repeats):
            if unet_forward is not None and unet_every and r % unet_every == 0:
                start = time.perf_counter()
                unet_forward()
                unet[r] = time.perf_counter() - start
                print(f"repeat {r}: UNet batch-3 forward {unet[r]:.2f}s", flush=True)
            for name, run in cases.items():
                times[name].append(run())
        side = resolution // 8
        eps = [torch.randn(1, 4, side, side, generator=g) for _ in range(3)]
        latents = torch.randn(1, 4, side, side, generator=g)
        sched = EulerDiscreteScheduler(timestep_spacing="trailing")

        def dcg_tail():
            sched.set_timesteps(4)
            pred = decoupled_guidance(*eps, 1.5, 3.0, rescale=0.75)
            sched.step(pred, sched.timesteps[1], latents)

        out["per_step_extra_s"]["dcg_guidance_rescale_scheduler"] = _best(dcg_tail, repeats)
    out["ip_branch_s_median"] = {k: round(statistics.median(v), 5) for k, v in times.items()}
    out["ip_branch_s_min"] = {k: round(min(v), 5) for k, v in times.items()}
    for name in ("am1", "am2"):
        paired = [a - b for a, b in zip(times[name], times["sdpa"])]
        out["per_step_extra_s"][name] = round(statistics.median(paired), 5)
        out[f"{name}_extra_s_paired"] = _spread(paired)
        if unet:
            ratios = [1 + paired[r] / t for r, t in unet.items()]
            out[f"{name}_over_no_am_paired"] = _spread(ratios) | {"n": len(ratios)}
    if unet:
        out["unet_forward_batch3_s"] = _spread(list(unet.values()), 3) | {"n": len(unet)}
    return out


def unet_forward_batch3(resolution: int):
    """The real-size SDXL UNet's forward for a batch of three (DCG's batch), as a closure."""
    device, dtype = torch.device("cpu"), torch.float32
    pipe, _ = build(device, dtype, lora=False)
    pipe.scheduler.set_timesteps(4, device=device)
    t = pipe.scheduler.timesteps[1]
    latents, text, added = inputs(pipe, 3, resolution, device, dtype)
    clip_width = pipe.unet.encoder_hid_proj.image_projection_layers[0].proj_in.in_features
    pipe.unet.encoder_hid_proj.image_projection_layers[0].clip_embeds = torch.randn(
        3, 1, 257, clip_width
    )

    def forward():
        pipe.unet(
            torch.cat([latents] * 3),
            t,
            encoder_hidden_states=text,
            added_cond_kwargs=added,
            return_dict=False,
        )

    return forward


def components(args: argparse.Namespace) -> None:
    """``--components``: FastFace's added work alone, turned into ratios over the UNet step."""
    from bench_am2_before_after import warm_allocator

    warm_allocator()  # as the UNet's freed activations do in a pipeline process
    res = args.resolution
    forward = None
    if args.unet_every:
        forward = unet_forward_batch3(res)
        with torch.no_grad():
            forward()  # warm-up
    result = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "command": " ".join(
            [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] * ("OMP_NUM_THREADS" in os.environ)
            + ["python", *sys.argv]
        ),
    }
    result[f"res{res}"] = component_costs(res, args.component_repeats, forward, args.unet_every)
    if res != 1024:
        result["res1024"] = component_costs(1024, max(3, args.component_repeats // 4))
    extra = result[f"res{res}"]["per_step_extra_s"]
    t3 = args.unet_batch3_s
    if forward is not None:
        t3 = result[f"res{res}"]["unet_forward_batch3_s"]["median"]
    if t3:
        result["unet_forward_batch3_s"] = t3
        result["dcg_achieved_over_ideal"] = round(
            t3 / (t3 + extra["dcg_guidance_rescale_scheduler"]), 5
        )
        result["am1_over_no_am"] = round(1 + extra["am1"] / t3, 5)
        result["am2_over_no_am"] = round(1 + extra["am2"] / t3, 5)
    result["note"] = (
        "extras per denoising step for a batch of 3 (DCG), summed over SDXL's 60 down/up IP "
        "layers (AM); AM cases interleaved with stock SDPA in each repeat, medians of the paired "
        "differences; ratios over the UNet's batch-3 forward "
        + ("timed in the same run" if forward is not None else "given by --unet-batch3-s")
    )
    out = Path(args.output) if args.output else RESULTS / "fastface_components_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def measure(
    resolution: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    lora: bool = False,
    tiny: bool = False,
    verbose: bool = True,
) -> dict:
    """One FastFace step (``denoise_step``) per case: no guidance, CFG, the UNet's batch-3
    forward alone, DCG, DCG + AM1, DCG + AM2; min over interleaved repeats, and the ratios."""
    t0 = time.perf_counter()
    pipe, layers = build(device, dtype, lora, tiny)
    build_s = time.perf_counter() - t0
    pipe.scheduler.set_timesteps(4, device=device)
    t = pipe.scheduler.timesteps[1]
    dcg = DCGConfig()
    feeds = {b: inputs(pipe, b, resolution, device, dtype) for b in (1, 2, 3)}
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
        for _ in range(repeats):
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
                if verbose:
                    print(f"{name}: {times[name][-1]:.2f}s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": resolution,
        "unet": "SDXL base config, random weights; IP-Adapter FaceID-Plus-v2 real size"
        + (" with rank-128 LoRA" if lora else " (LoRA left out)"),
        "ip_layers": layers,
        "ip_layers_targeted_down_up": sum(
            1
            for p in pipe.unet.attn_processors.values()
            if getattr(p, "part", None) in ("down", "up")
        ),
        "build_s": round(build_s, 1),
        "repeats": repeats,
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
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--lora", action="store_true", help="include the adapter's rank-128 LoRA")
    parser.add_argument("--output", default=None)
    parser.add_argument("--tiny", action="store_true", help="smoke run on the tiny SDXL UNet")
    parser.add_argument(
        "--components",
        action="store_true",
        help="time only what FastFace adds (AM at SDXL's layer shapes, DCG's tail): no UNet",
    )
    parser.add_argument(
        "--unet-batch3-s",
        type=float,
        help="with --components: the UNet's batch-3 step time to turn the extras into ratios",
    )
    parser.add_argument(
        "--component-repeats", type=int, default=20, help="with --components: repeats"
    )
    parser.add_argument(
        "--unet-every",
        type=int,
        default=0,
        help="with --components: also build the real-size UNet (~14 GiB: under flock) and time "
        "its batch-3 forward in the same loop every N repeats; ratios then use it",
    )
    args = parser.parse_args()
    if args.components:
        components(args)
        return
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    result = measure(args.resolution, args.repeats, device, dtype, args.lora, args.tiny)
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
