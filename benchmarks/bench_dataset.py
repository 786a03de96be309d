"""Pair generation at real SDXL size: pairs/s, the share of each phase, GPU-hours for 10M pairs.

Real-size architectures with random weights (speed does not depend on the values), built in
turn so that the peak stays below ~16 GB in fp32:

1. target phase: SDXL (UNet, VAE, both text encoders) draws the target from the target prompt;
   the identity prompt is encoded with the same text encoders (the input model here shares
   SDXL's encoders), then all of it is freed;
2. the ViT-H CLIP image encoder embeds the target (IP-Adapter image prompt), then is freed;
3. input phase: SDXL's UNet + a canny ControlNet (``ControlNetModel.from_unet``, 1.25B) + the
   IP-Adapter's projections draw the input from the embeddings and the target's edges;
4. the filters (dlib detection, landmarks, descriptors) on a real portrait pair.

UNet (and ControlNet) calls are timed by forward hooks, so each phase splits into a per-step
part and a fixed part (text encoders, VAE decode), and the time of a pair at ``s`` steps is
projected as ``fixed + s * step``. The GPU projection uses a published measurement (see
``GPU_REFERENCE``) scaled by the CPU-measured ratio of input to target cost.

    flock /tmp/realsize.lock python benchmarks/bench_dataset.py --width 256 --height 448
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import time
from pathlib import Path

import torch
from PIL import Image

#: SDXL base 1.0, 1024x1024, 30 steps, guidance on, batch 1, bf16 + SDPA, no compile, on an
#: H100 80 GB: 3.315 s (diffusers' "accelerate inference" tutorial's benchmark table,
#: sayakpaul/sample-datasets collated_results_sdxl.csv). Compiled (max-autotune): 2.538 s.
GPU_REFERENCE = {
    "device": "NVIDIA H100 80GB",
    "seconds_per_image": 3.315,
    "steps": 30,
    "pixels": 1024 * 1024,
    "source": "huggingface.co/datasets/sayakpaul/sample-datasets collated_results_sdxl.csv "
    "(diffusers tutorial 'Accelerate inference of text-to-image diffusion models'): SDXL "
    "base, bf16, SDPA, 30 steps, 1024x1024, batch 1",
}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class StepTimer:
    """Sums the wall time of a module's forward calls (forward pre/post hooks)."""

    def __init__(self, *modules: torch.nn.Module):
        self.seconds = 0.0
        self.calls = 0
        self._t0 = 0.0
        self._depth = 0
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, *_):
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0
            self.calls += 1

    def reset(self):
        self.seconds, self.calls = 0.0, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=448)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--out", default="benchmarks/results/dataset_cpu.json")
    ap.add_argument("--smoke", action="store_true", help="tiny models: check the script runs")
    ap.add_argument(
        "--filter-only",
        action="store_true",
        help="re-measure only the filters and update --out's projections (no models)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.filter_only:
        result = json.loads(Path(args.out).read_text())
        measure_filter(result, result["width"], result["height"])
        measure_filter(result, 576, 1024)
        finish(result, args.out)
        return

    from diffusers import (
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from instantportrait.components import build_sdxl, clip_tokenizer, count_parameters
    from instantportrait.data.canny import canny_image
    from instantportrait.data.models import (
        SDXL_SCHEDULER_CONFIG,
        VIT_H_IMAGE_ENCODER_CONFIG,
        ip_adapter_state_dict,
    )
    from instantportrait.data.prompts import PromptGenerator

    w, h = args.width, args.height
    row = next(PromptGenerator(seed=0).rows(1))
    result: dict = {"width": w, "height": h, "guidance": args.guidance, "steps_timed": 1}
    gen = torch.Generator().manual_seed(0)

    # 1. target phase --------------------------------------------------------------------
    t0 = time.perf_counter()
    if args.smoke:
        from instantportrait.data import models as dm

        tiny = dm._tiny_sdxl(0)
        parts = {k: getattr(tiny, k) for k in ("unet", "vae", "text_encoder", "text_encoder_2")}
        build_sdxl = lambda seed, with_text_encoders=True: {"unet": dm._tiny_sdxl(seed).unet}  # noqa: E731
        vit = dm.TINY_IMAGE_ENCODER_CONFIG
    else:
        parts = build_sdxl(seed=0)
        vit = VIT_H_IMAGE_ENCODER_CONFIG
    result["params_unet"] = count_parameters(parts["unet"])
    pipe = StableDiffusionXLPipeline(
        **parts,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    result["build_target_s"] = time.perf_counter() - t0
    timer = StepTimer(pipe.unet)
    call = dict(height=h, width=w, num_inference_steps=1, guidance_scale=args.guidance)
    with torch.no_grad():
        warm = {**call, "height": 64, "width": 64}
        pipe(prompt=row["target"], generator=gen, **warm)  # warm-up at a tiny size
        timer.reset()
        t0 = time.perf_counter()
        target = pipe(prompt=row["target"], generator=gen, **call).images[0]
        total = time.perf_counter() - t0
        result["target"] = {
            "total_s": total,
            "step_s": timer.seconds,
            "fixed_s": total - timer.seconds,
        }
        t0 = time.perf_counter()
        embeds = pipe.encode_prompt(row["identity"], do_classifier_free_guidance=args.guidance > 1)
        result["input_text_encode_s"] = time.perf_counter() - t0
    result["peak_rss_target_gib"] = peak_rss_gib()
    print(f"target: {result['target']}")
    vae = parts.pop("vae")
    del pipe, parts, timer
    gc.collect()

    # 2. image encoder ---------------------------------------------------------------------
    torch.manual_seed(1)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vit)).eval()
    processor = CLIPImageProcessor(size=vit["image_size"], crop_size=vit["image_size"])
    with torch.no_grad():
        pixels = processor(images=[target], return_tensors="pt").pixel_values
        encoder(pixels)  # warm-up
        t0 = time.perf_counter()
        image_embeds = encoder(pixels).image_embeds
        result["input_image_encode_s"] = time.perf_counter() - t0
    del encoder
    gc.collect()

    # 3. input phase -------------------------------------------------------------------------
    t0 = time.perf_counter()
    unet = build_sdxl(seed=2, with_text_encoders=False)["unet"]
    controlnet = ControlNetModel.from_unet(unet).eval()
    result["params_controlnet"] = count_parameters(controlnet)
    pipe = StableDiffusionXLControlNetPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet,
        controlnet=controlnet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
    )
    sd = ip_adapter_state_dict(unet, vit["projection_dim"])
    split = {"image_proj": {}, "ip_adapter": {}}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        split[head][rest] = v
    pipe.load_ip_adapter(split, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.6)
    pipe.set_progress_bar_config(disable=True)
    result["build_input_s"] = time.perf_counter() - t0
    pos, neg, pooled, neg_pooled = embeds
    ip = image_embeds[:, None]
    ip = torch.cat([torch.zeros_like(ip), ip]) if args.guidance > 1 else ip
    t0 = time.perf_counter()
    edges = canny_image(target)
    result["canny_s"] = time.perf_counter() - t0
    timer = StepTimer(pipe.unet, pipe.controlnet)
    icall = dict(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=neg_pooled,
        image=edges,
        ip_adapter_image_embeds=[ip],
        controlnet_conditioning_scale=0.6,
        **call,
    )
    with torch.no_grad():
        warm_edges = edges.resize((64, 64))
        pipe(generator=gen, **{**icall, "height": 64, "width": 64, "image": warm_edges})
        timer.reset()
        t0 = time.perf_counter()
        pipe(generator=gen, **icall)
        total = time.perf_counter() - t0
    fixed = total - timer.seconds + result["input_text_encode_s"] + result["input_image_encode_s"]
    result["input"] = {"total_s": fixed + timer.seconds, "step_s": timer.seconds, "fixed_s": fixed}
    result["peak_rss_input_gib"] = peak_rss_gib()
    print(f"input: {result['input']}")
    del pipe, unet, controlnet, vae, timer
    gc.collect()

    # 4. filters on a real portrait pair at this resolution and at 576x1024 ------------------
    measure_filter(result, w, h)
    measure_filter(result, 576, 1024)
    finish(result, args.out)


def measure_filter(result: dict, w: int, h: int) -> None:
    """The filters' time on a kept pair: a real portrait (aspect kept) on a w x h canvas."""
    from instantportrait.data.canny import canny_image
    from instantportrait.data.filters import FilterConfig, PairFilter

    root = Path(__file__).resolve().parents[1]
    face = Image.open(root / "examples" / "astronaut.png").convert("RGB")
    side = min(w, h)
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    canvas.paste(face.resize((side, side)), ((w - side) // 2, (h - side) // 3))
    mirrored = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pf = PairFilter(FilterConfig())
    pf(mirrored, canvas)  # loads dlib's models
    t0 = time.perf_counter()
    verdict = pf(mirrored, canvas)
    tag = "" if (w, h) == (result["width"], result["height"]) else f"_{w}x{h}"
    result[f"filter_s{tag}"] = time.perf_counter() - t0
    result[f"filter_verdict{tag}"] = verdict.reason or "kept"
    t0 = time.perf_counter()
    canny_image(canvas)
    result[f"canny_s{tag}"] = time.perf_counter() - t0


def finish(result: dict, out_path: str) -> None:
    # summary -----------------------------------------------------------------------------
    def pair_seconds(steps: int) -> dict[str, float]:
        t = result["target"]["fixed_s"] + steps * result["target"]["step_s"]
        i = result["input"]["fixed_s"] + steps * result["input"]["step_s"]
        f = result["filter_s"] + result["canny_s"]
        return {"target": t, "input": i, "filter": f, "total": t + i + f}

    cpu = {}
    for steps in (1, 4, 30):
        p = pair_seconds(steps)
        cpu[f"{steps}_steps"] = {
            "pairs_per_s": 1.0 / p["total"],
            "seconds_per_pair": p["total"],
            "share": {k: p[k] / p["total"] for k in ("target", "input", "filter")},
        }
    result["cpu"] = cpu

    # GPU projection: per-step cost from the reference, scaled by pixels; the input costs
    # (input step / target step) times a target step, both measured here at real size.
    ref = GPU_REFERENCE
    step_ref = ref["seconds_per_image"] / ref["steps"] * (576 * 1024) / ref["pixels"]
    ratio = result["input"]["step_s"] / result["target"]["step_s"]
    gpu = {}
    for steps in (4, 30):
        target_s = steps * step_ref
        input_s = steps * step_ref * ratio
        seconds = target_s + input_s
        cpu_side = result["filter_s_576x1024"] + result["canny_s_576x1024"]
        gpu[f"{steps}_steps"] = {
            "seconds_per_pair": seconds,
            "gpu_hours_10M_pairs": 10_000_000 * seconds / 3600.0,
            # today's job filters in the generating process, so the GPU waits for it
            "seconds_per_pair_with_serial_filters": seconds + cpu_side,
            "gpu_hours_10M_pairs_with_serial_filters": 10_000_000 * (seconds + cpu_side) / 3600,
        }
    result["gpu_projection"] = {
        "reference": ref,
        "resolution": "576x1024",
        "input_over_target_step_ratio": ratio,
        "assumptions": "per-step cost proportional to pixels; CFG on for both models (a "
        "distilled 4-step model run without CFG costs about half per step); the reference's "
        "text-encoder and VAE time is spread over its 30 steps (a 4-step estimate is low by "
        "that fixed time); every generated pair kept (divide by the kept fraction); "
        "'with_serial_filters' adds this CPU's filter + canny time at 576x1024 (one core)",
        **gpu,
    }
    # the machine of the model run (a --filter-only run keeps it)
    result.setdefault(
        "machine",
        {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"cpu": cpu, "gpu_projection": gpu, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
