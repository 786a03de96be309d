"""The GPU suite's cases, most important first (see ``gpu_suite.py`` for the runner); the
FLUX.1 Kontext section's cases are in ``gpu_cases_kontext.py``.

Each case is a function ``case(ctx) -> dict`` that builds what it measures at the size the
context asks for (real size on a device run, tiny in ``--dry-run``), runs it, and returns
the figures. The measuring code is the existing benchmarks' own (``bench_*.py`` beside this
file, and the :mod:`instantportrait.benchmark` package for the edit pipeline), called with
the device run's settings, so the suite and the single benchmarks can never disagree.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from gpu_cases_kontext import (
    kontext_edit_1024,
    kontext_idenet_step_1024x576,
    kontext_ipnet_step_1024x576,
)

#: FLOPs of one 512x512 one-step edit (text encoder, VAE encode, one UNet call, VAE decode)
#: at SD1.5-InstructPix2Pix size; at the H100's ~800 TFLOP/s of bf16 work that is 5.5 ms.
EDIT_512_TFLOP = 4.44
H100_BF16_TFLOPS = 800.0


@dataclass
class SuiteContext:
    """What every case needs: where it runs, at which size, and how long it may take.

    Attributes:
        device: the device measured.
        dry: ``--dry-run``: tiny components, 64 px, one iteration (a CPU check of the code).
        remaining: seconds left in the case's section (a case sizes its repeats by it).
        tmp: a scratch folder for datasets and run folders.
    """

    device: torch.device
    dry: bool
    remaining: Callable[[], float]
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu_suite_")))
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return "tiny" if self.dry else "real"

    def side(self, real: int) -> int:
        """A resolution: ``real`` on a device run, scaled to 64 px (multiple of 8) dry."""
        return real if not self.dry else max(32, (real * 64 // 512) // 8 * 8)

    def repeats(self, real: int) -> int:
        return 1 if self.dry else real

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _gpu_peak_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 1024**3, 3)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


# ====================================================================== 1-2: the edit pipeline


def _edit_rows(ctx: SuiteContext, settings: Any) -> dict[str, Any]:
    from instantportrait.benchmark import build_pipeline, run_benchmark

    pipe = ctx.cache.get("edit_pipe")
    if pipe is None:  # built once, kept for the edit cases
        pipe = ctx.cache["edit_pipe"] = build_pipeline(settings, ctx.device, torch.float16)
    doc = run_benchmark(settings, pipe, progress=False)
    keep = (
        *("case", "option", "resolution", "batch_size", "dtype", "status", "reason"),
        *("images_per_s", "peak_memory_gb", "efficiency", "ratio_to_one_step"),
        *("ideal_ratio_to_one_step", "full_length_s", "steps", "steps_run"),
    )
    rows = []
    for r in doc["cases"]:
        row = {k: r[k] for k in keep if k in r}
        if "latency_s" in r:
            row["latency_ms_median"] = round(r["latency_s"]["median"] * 1e3, 3)
        if "images_per_s" in r:
            row["images_per_s"] = round(r["images_per_s"], 2)
        rows.append(row)
    return {"rows": rows, "model": doc["model"]["name"], "skipped_options": doc["options"]}


def _edit_settings(ctx: SuiteContext, **kw: Any) -> Any:
    from instantportrait.benchmark import BenchSettings

    return BenchSettings(
        size=ctx.size,
        device=str(ctx.device),
        dtype="float16",
        **{"warmup": 1 if ctx.dry else 3, "repeats": ctx.repeats(8), **kw},
    )


def edit_one_step(resolution: tuple[int, int]) -> Callable[[SuiteContext], dict]:
    """Case 1: the one-step edit at ``resolution``, batch 1 and 8: fp16 with the full VAE
    (the plain row), the ``max`` preset (fp16, channels-last, SDPA, fused QKV, tiny VAE,
    cuDNN autotune, CUDA graphs), and bf16."""

    def case(ctx: SuiteContext) -> dict:
        w, h = resolution
        if ctx.dry:
            w, h = ctx.side(w), ctx.side(h)
        settings = _edit_settings(
            ctx,
            modes=["ipnet"],
            batch_sizes=[1, 2] if ctx.dry else [1, 8],
            resolutions=[(w, h)],
            options=["max", "bf16"],
        )
        return _edit_rows(ctx, settings)

    return case


def edit_guided(ctx: SuiteContext) -> dict:
    """Case 2: InstructPix2Pix (30 steps, three branches) and IDE-Net (20 steps) at 512x512,
    batch 1, fp16, each with its time over the one-step mode's."""
    side = ctx.side(512)
    settings = _edit_settings(
        ctx,
        modes=["ipnet", "idenet", "ip2p"],
        batch_sizes=[1],
        resolutions=[(side, side)],
        repeats=ctx.repeats(2),
        max_steps=2 if ctx.dry else None,
    )
    out = _edit_rows(ctx, settings)
    ctx.cache.pop("edit_pipe", None)  # the last edit case: free the pipeline
    ctx.free()
    return out


# ====================================================================== 3: FastFace


def fastface_steps(ctx: SuiteContext) -> dict:
    """Case 3: FastFace at 1024x1024 on SDXL + FaceID-Plus-v2: a 4-step baseline step, DCG,
    AM1, AM2 (each one ``denoise_step``), and their ratios (``bench_fastface.measure``)."""
    import bench_fastface

    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    result = bench_fastface.measure(
        ctx.side(1024), ctx.repeats(3), ctx.device, dtype, tiny=ctx.dry, verbose=False
    )
    ctx.free()
    return result


# ====================================================================== 4: FPGA


def fpga_identities(ctx: SuiteContext) -> dict:
    """Case 4a: one FPGA sampling step (CFG, ID-ControlNet + UNet) at 512x512 with 1, 2 and
    4 identities under mask-guided multi-ID attention (``bench_fpga.bench_inference``)."""
    import bench_fpga

    out = bench_fpga.bench_inference(
        "tiny" if ctx.dry else "real",
        ctx.side(512),
        ctx.repeats(5),
        ctx.device,
        dtype=_half(ctx),
        flop_count=ctx.dry,
    )
    _reset_peak(ctx.device)
    ctx.free()
    return out


def fpga_repcontrolnet(ctx: SuiteContext) -> dict:
    """Case 4b: the merged RepControlNet against ControlNet + UNet and the base UNet at
    512x512, batch 2 (CFG), interleaved (``bench_repcontrolnet.time_models``)."""
    import bench_repcontrolnet

    _reset_peak(ctx.device)
    times = bench_repcontrolnet.time_models(
        ctx.side(512),
        ctx.repeats(10),
        ctx.device,
        _half(ctx),
        batch=2,
        size="tiny" if ctx.dry else "sd15",
        verbose=False,
    )
    merged, cn, base = times["rep merged"], times["controlnet+unet"], times["base"]
    out = {
        "seconds": times,
        "speedup_over_controlnet": round(cn["seconds"] / merged["seconds"], 3),
        "merged_over_base": round(merged["seconds"] / base["seconds"], 3),
        "peak_memory_gb": _gpu_peak_gb(ctx.device),
    }
    ctx.free()
    return out


def diir_per_face(ctx: SuiteContext) -> dict:
    """Case 4c: DIIR restoring 1 and 4 faces in one batch (512 px crops, 30 DDIM steps on a
    device run: the paper's setting), seconds per face (``bench_restore.measure``)."""
    import bench_restore

    _reset_peak(ctx.device)
    results, summary = bench_restore.measure(
        ctx.side(512),
        2 if ctx.dry else 30,
        5.0,
        [1, 4],
        ctx.repeats(1),
        size="tiny" if ctx.dry else "sd15",
        device=ctx.device,
        dtype=_half(ctx),
        verbose=False,
    )
    out = {"faces": results, "summary": summary, "peak_memory_gb": _gpu_peak_gb(ctx.device)}
    ctx.free()
    return out


def _half(ctx: SuiteContext) -> torch.dtype:
    """fp16 on CUDA; float32 in a CPU dry run (CPU half precision is slow and checks nothing
    the device run does not)."""
    return torch.float16 if ctx.device.type == "cuda" else torch.float32


# ====================================================================== 5: training steps


def _pairs(ctx: SuiteContext, side: int) -> Path:
    import bench_training

    folder = ctx.tmp / f"pairs{side}"
    if not (folder / "pairs.jsonl").is_file():
        bench_training.make_dataset(folder, side)
    return folder


def _random_arcface() -> Any:
    """An iresnet50 ArcFace with random weights: the identity term's cost without dlib's
    weight file (not on the device image); speed does not depend on the weights."""
    from instantportrait.faces.arcface import ArcFaceEmbedder, iresnet50

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ArcFaceEmbedder(iresnet50()).eval().requires_grad_(False)


def train_idenet(ctx: SuiteContext) -> dict:
    """Case 5a: one IDE-Net training step (forward + backward) at 512x512, batch 1, with and
    without the identity term (face window), and the step's peak memory."""
    import bench_training

    side = ctx.side(512)
    _reset_peak(ctx.device)
    out = bench_training.bench_idenet(
        ctx.size,
        _pairs(ctx, side),
        side,
        ctx.tmp,
        warmup=1,
        repeats=ctx.repeats(3),
        full_decode=False,
        embedder=_random_arcface(),
    )
    out["peak_memory_gb"] = _gpu_peak_gb(ctx.device)
    ctx.free()
    return out


def train_ipnet(ctx: SuiteContext) -> dict:
    """Case 5b: one IPNet student step per stage of Table 6 (high, middle, low) at 512x512,
    batch 1: generator and discriminator updates' forward and backward, peak memory."""
    import bench_training

    side = ctx.side(512)
    out = bench_training.bench_ipnet(
        ctx.size, _pairs(ctx, side), side, ctx.tmp, warmup=1, repeats=ctx.repeats(2)
    )
    ctx.free()
    return out


def train_faceanet(ctx: SuiteContext) -> dict:
    """Case 5c: one FaceA-Net tuning step at 512x512, batch 4 (both tasks of eq. 2, the
    optimizer step included) on SD-inpainting size, steps/s and peak memory: the open
    question behind the paper's 24 GB card."""
    import bench_faceanet

    args = SimpleNamespace(
        size="tiny" if ctx.dry else "random-real",
        resolution=ctx.side(512),
        steps=ctx.repeats(3),
        person_steps=1000,
        allow_mixed_identities=True,  # the one-person check needs dlib's network (not there)
    )
    out, trainer = bench_faceanet.tuning(args, ctx.tmp / "faceanet")
    del trainer
    out["steps_per_s"] = round(1 / out["step_s_median"], 3)
    ctx.free()
    return out


@dataclass(frozen=True)
class Case:
    """One measured case of the suite: its section, name, function and the seconds it
    needs at least on a device run (a case is not started with less left in its section)."""

    section: str
    name: str
    fn: Callable[[SuiteContext], dict]
    min_s: float


#: Sections in priority order, each with its share of the 8 minutes (seconds). A section's
#: unused time passes to the next; a cut run still answers the first sections. The shares
#: first left 10 s unassigned (470 s); the Kontext section (three cases of about 10-20 s each
#: on an H100 once built: a 1024^2 edit is ~0.5 s, a checkpointed step ~1-2 s; building the
#: 12B transformer on the GPU, the adapters and the meta-device counts take the rest) takes
#: those 10 s and 80 s from the sections with the most room over their cases' minimum times
#: (``min_s``): edit 170 -> 120 (2 x 30 s needed), guided 45 -> 35 (15), fastface
#: 80 -> 65 (40), fpga 85 -> 80 (65). Training keeps its 90 s (85 s of minimums).
SECTIONS: dict[str, float] = {
    "edit": 120.0,
    "guided": 35.0,
    "fastface": 65.0,
    "fpga": 80.0,
    "training": 90.0,
    "kontext": 90.0,
}

CASES: tuple[Case, ...] = (
    Case("edit", "one_step_512x512", edit_one_step((512, 512)), 30),
    Case("edit", "one_step_1024x576", edit_one_step((1024, 576)), 30),
    Case("guided", "guided_512x512", edit_guided, 15),
    Case("fastface", "fastface_1024", fastface_steps, 40),
    Case("fpga", "fpga_1_2_4_ids_512", fpga_identities, 20),
    Case("fpga", "repcontrolnet_512", fpga_repcontrolnet, 25),
    Case("fpga", "diir_per_face_512", diir_per_face, 20),
    Case("training", "idenet_step_512", train_idenet, 25),
    Case("training", "ipnet_stages_512", train_ipnet, 30),
    Case("training", "faceanet_step_512_b4", train_faceanet, 30),
    Case("kontext", "kontext_edit_1024", kontext_edit_1024, 30),
    Case("kontext", "kontext_idenet_step_1024x576", kontext_idenet_step_1024x576, 25),
    Case("kontext", "kontext_ipnet_step_1024x576", kontext_ipnet_step_1024x576, 25),
)
