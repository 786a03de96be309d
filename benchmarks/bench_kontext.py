"""FLUX.1 Kontext against the InstructPix2Pix UNet: FLOPs, the one-step/28-step ratio, and the
peak memory of a one-step 1024x1024 edit, all from the published configs on the meta device.

Nothing here builds a real-size model in memory: the 12B transformer, T5-XXL, CLIP-L, the
VAEs and the InstructPix2Pix UNet are built on ``torch.device("meta")`` (shapes, no storage),
and one forward call of each is run there under

* ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; attention is
  counted as its two batched matmuls, the same FLOPs as a fused kernel), and
* :class:`LiveBytes`, a dispatch mode that adds each new tensor's bytes when an operator
  makes it and subtracts them when the last tensor viewing that storage is freed (weak
  references), so its maximum is the activation peak of an inference call. Attention is
  tracked twice: as a fused (flash / memory-efficient) kernel, which keeps only its output,
  and as the plain math path that materialises the ``heads x L x L`` scores.

The timing part runs the tiny bundle (``init-tiny --kind kontext``) on the CPU: one-step
student against the 28-step teacher, the same image and size.

    python benchmarks/bench_kontext.py            # ~1-2 min on 2 CPU cores
    python benchmarks/bench_kontext.py --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")
BF16 = torch.bfloat16
GiB = 2**30


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensors operators have made and that are still referenced, and their
    peak (see the module doc). Views and in-place results share their base's storage and are
    not counted again; a storage is freed when its last tensor is."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage key -> [tensors alive, bytes]

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten(out)
        for t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            entry = self._refs.get(key)
            if entry is None:
                entry = self._refs[key] = [0, t.untyped_storage().nbytes()]
                self.live += entry[1]
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.live)
        return out


class FusedAttention(torch.overrides.TorchFunctionMode):
    """``scaled_dot_product_attention`` as a fused kernel: its output only (no scores)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            named = dict(zip(("query", "key", "value"), args)) | kwargs
            q, v = named["query"], named["value"]
            return q.new_empty((*q.shape[:-1], v.shape[-1]))
        return func(*args, **kwargs)


def measure(call, *, fused_attention: bool = False) -> dict[str, float]:
    """FLOPs and activation peak (bytes) of ``call()`` on meta tensors, gradients off."""
    with torch.no_grad():
        with FlopCounterMode(display=False) as flops:
            call()
        tracker = LiveBytes()
        if fused_attention:
            with FusedAttention(), tracker:
                call()
        else:
            with tracker:
                call()
    return {"flops": float(flops.get_total_flops()), "activation_peak_bytes": tracker.peak}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- Kontext


def kontext_parts():
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from instantportrait.backbones.kontext_components import (
        FLUX_VAE_CONFIG,
        KONTEXT_TRANSFORMER_CONFIG,
        T5_XXL_CONFIG,
    )
    from instantportrait.components import CLIP_L_TEXT_CONFIG, _text_encoder

    with META:
        parts = {
            "transformer": FluxTransformer2DModel(**KONTEXT_TRANSFORMER_CONFIG),
            "vae": AutoencoderKL(**FLUX_VAE_CONFIG),
            "text_encoder": _text_encoder(CLIP_L_TEXT_CONFIG),
            "text_encoder_2": T5EncoderModel(T5Config(**T5_XXL_CONFIG)),
        }
    return {k: v.to(BF16).eval() for k, v in parts.items()}


def kontext_transformer_call(transformer, height: int, width: int, text_tokens: int = 512):
    """One call at ``height x width``: (h/16)(w/16) noisy tokens + as many image tokens."""
    n = (height // 16) * (width // 16)
    m = {"device": META, "dtype": BF16}
    cfg = transformer.config

    def call():
        return transformer(
            hidden_states=torch.zeros(1, 2 * n, cfg.in_channels, **m),
            encoder_hidden_states=torch.zeros(1, text_tokens, cfg.joint_attention_dim, **m),
            pooled_projections=torch.zeros(1, cfg.pooled_projection_dim, **m),
            timestep=torch.ones(1, **m),
            guidance=torch.full((1,), 2.5, device=META),
            img_ids=torch.zeros(2 * n, 3, device=META),
            txt_ids=torch.zeros(text_tokens, 3, device=META),
            return_dict=False,
        )[0]

    return call, n


def vae_calls(vae, height: int, width: int, channels: int):
    m = {"device": META, "dtype": BF16}
    f = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode():
        return vae.encode(torch.zeros(1, 3, height, width, **m)).latent_dist.mode()

    def decode():
        return vae.decode(torch.zeros(1, channels, height // f, width // f, **m)).sample

    return encode, decode


def kontext_figures(size: int) -> dict[str, Any]:
    parts = kontext_parts()
    tr = parts["transformer"]
    call, n = kontext_transformer_call(tr, size, size)
    fused = measure(call, fused_attention=True)
    math = measure(call)
    encode, decode = vae_calls(parts["vae"], size, size, 16)
    ids = torch.zeros(1, 77, dtype=torch.long, device=META)
    t5_ids = torch.zeros(1, 512, dtype=torch.long, device=META)
    stages = {
        "clip_l": measure(lambda: parts["text_encoder"](ids).pooler_output, fused_attention=True),
        "t5_xxl": measure(lambda: parts["text_encoder_2"](t5_ids)[0], fused_attention=True),
        "vae_encode": measure(encode, fused_attention=True),
        "transformer": fused,
        "vae_decode": measure(decode, fused_attention=True),
    }
    params = {k: n_params(v) for k, v in parts.items()}
    param_bytes = {k: 2 * v for k, v in params.items()}  # bf16
    other = sum(stages[k]["flops"] for k in ("clip_l", "t5_xxl", "vae_encode", "vae_decode"))
    t = fused["flops"]
    # One-step edit: every component resident in bf16; the stages run one after another, so
    # the activation peak is the largest stage's (the transformer's inputs/outputs are small).
    act_peak = max(s["activation_peak_bytes"] for s in stages.values())
    all_params = sum(param_bytes.values())
    no_t5 = all_params - param_bytes["text_encoder_2"]
    return {
        "size": [size, size],
        "tokens": {"noisy": n, "image": n, "text": 512},
        "params": params,
        "transformer_call": {
            "flops": t,
            "tflops": t / 1e12,
            "activation_peak_gib_fused_attention": fused["activation_peak_bytes"] / GiB,
            "activation_peak_gib_math_attention": math["activation_peak_bytes"] / GiB,
        },
        "stages": {
            k: {
                "tflops": v["flops"] / 1e12,
                "activation_peak_gib": v["activation_peak_bytes"] / GiB,
            }
            for k, v in stages.items()
        },  # fmt: skip
        "ideal_ratio": {
            "transformer_only": 28.0,
            "end_to_end": (other + 28 * t) / (other + t),
            "teacher_tflops": (other + 28 * t) / 1e12,
            "student_tflops": (other + t) / 1e12,
        },
        "one_step_peak_memory_bf16": {
            "parameters_gib": all_params / GiB,
            "activation_peak_gib": act_peak / GiB,
            "total_gib": (all_params + act_peak) / GiB,
            "total_gib_t5_offloaded_after_encoding": (no_t5 + act_peak) / GiB,
            "total_gib_math_attention": (all_params + max(act_peak, math["activation_peak_bytes"]))
            / GiB,
        },
    }


# ---------------------------------------------------------------------------- the UNet


def unet_figures(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    from instantportrait.components import SD15_UNET_CONFIG, _unet

    with META:  # build_components("instruct-pix2pix")'s UNet (its scheduler needs real memory)
        unet = _unet(SD15_UNET_CONFIG, 8)
    unet = unet.to(BF16).eval()
    out = {"params": n_params(unet)}
    m = {"device": META, "dtype": BF16}

    def unet_call(batch: int, h: int, w: int):
        return lambda: unet(
            torch.zeros(batch, 8, h // 8, w // 8, **m),
            torch.full((batch,), 999, device=META),
            encoder_hidden_states=torch.zeros(batch, 77, 768, **m),
            return_dict=False,
        )[0]

    for h, w in sizes:
        one = measure(unet_call(1, h, w), fused_attention=True)
        out[f"{w}x{h}"] = {
            "tflops_one_branch": one["flops"] / 1e12,
            # the multi-step teacher's guided step runs three branches in one batch
            "tflops_guided_step": measure(unet_call(3, h, w))["flops"] / 1e12,
            "activation_peak_gib_fused_attention": one["activation_peak_bytes"] / GiB,
        }
    return out


# ---------------------------------------------------------------------------- CPU timing


def tiny_timing(size: int, repeats: int, steps: int) -> dict[str, Any]:
    from PIL import Image

    from instantportrait.backbones.kontext_components import build_kontext_components
    from instantportrait.pipelines.kontext_edit import KontextEditPipeline

    pipe = KontextEditPipeline(**build_kontext_components("tiny", seed=0))
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (size, size), (120, 80, 60))

    def run(n):
        return pipe("make it a watercolor painting", image, num_inference_steps=n,
                    generator=torch.Generator().manual_seed(0), output_type="pt")  # fmt: skip

    result = {}
    for n in (1, steps):
        run(n)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(n)
            times.append(time.perf_counter() - start)
        result[f"{n}_step_s"] = statistics.median(times)
    result["measured_ratio"] = result[f"{steps}_step_s"] / result["1_step_s"]
    result["size"] = [size, size]
    result["repeats"] = repeats
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="Kontext edit size (square)")
    parser.add_argument("--tiny-size", type=int, default=128, help="CPU timing image size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the timing")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "kontext_meta_cpu.json")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from instantportrait.benchmark.report import write_results

    kontext = kontext_figures(args.size)
    unet = unet_figures([(512, 512), (576, 1024)])
    timing = tiny_timing(args.tiny_size, args.repeats, 28)
    results = {
        "what": "FLUX.1 Kontext [dev] vs InstructPix2Pix UNet: FLOPs and memory on the meta "
        "device from the published configs (bf16, batch 1); one-step vs 28-step timing of "
        "the tiny Kontext bundle on the CPU",
        "torch": torch.__version__,
        "kontext": kontext,
        "instructpix2pix_unet": unet,
        "tiny_cpu_timing": {**timing, "threads": args.threads},
    }
    path = write_results(results, args.out)
    t = kontext["transformer_call"]
    print(f"Kontext transformer call at {args.size}^2: {t['tflops']:.1f} TFLOPs")
    for key in ("512x512", "1024x576"):
        u = unet[key]
        print(f"IP2P UNet at {key}: {u['tflops_one_branch']:.2f} TFLOPs one branch, "
              f"{u['tflops_guided_step']:.2f} a guided step")  # fmt: skip
    r = kontext["ideal_ratio"]
    print(f"28-step teacher / one-step student, ideal: {r['transformer_only']:.0f}x "
          f"(transformer), {r['end_to_end']:.1f}x (with encoders and VAE)")  # fmt: skip
    print(f"measured at tiny size on CPU ({args.tiny_size}^2): {timing['measured_ratio']:.1f}x "
          f"({timing['28_step_s']:.3f} s / {timing['1_step_s']:.3f} s)")  # fmt: skip
    mem = kontext["one_step_peak_memory_bf16"]
    print(f"one-step edit at {args.size}^2 in bf16: {mem['parameters_gib']:.1f} GiB parameters "
          f"+ {mem['activation_peak_gib']:.2f} GiB activations = {mem['total_gib']:.1f} GiB "
          f"({mem['total_gib_t5_offloaded_after_encoding']:.1f} GiB, T5 offloaded)")  # fmt: skip
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
