"""Benchmark cases: the edit modes (InstantPortrait Table 1) and the case registry."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .timing import (
    ComponentClock,
    ComponentTimes,
    PeakMemory,
    Timing,
    efficiency,
    extrapolate_steps,
    ideal_seconds,
    pipeline_modules,
    synchronize,
    time_call,
)

if TYPE_CHECKING:
    from .settings import BenchSettings


# ====================================================================== modes and cases


@dataclass(frozen=True)
class EditMode:
    """One way of running the editor: steps, style-boost passes and guidance."""

    name: str
    description: str
    steps: int
    iterations: int = 1
    guidance_scale: float = 1.0
    image_guidance_scale: float = 1.0

    @property
    def guided(self) -> bool:
        """Three UNet branches (InstructPix2Pix text + image guidance) per step."""
        from ..guidance import needs_three_branches

        return needs_three_branches(self.guidance_scale, self.image_guidance_scale)

    @property
    def branches(self) -> int:
        return 3 if self.guided else 1


#: The modes the papers compare (InstantPortrait Table 1 and §3.2.4).
EDIT_MODES: dict[str, EditMode] = {
    m.name: m
    for m in (
        EditMode("ipnet", "IPNet: one step, no guidance", steps=1),
        EditMode("style_boost", "IPNet style boost: two one-step passes", steps=1, iterations=2),
        EditMode("idenet", "IDE-Net: 20 guided steps", 20, 1, 7.5, 1.5),
        EditMode("ip2p", "InstructPix2Pix: 30 steps, 3-branch guidance", 30, 1, 7.5, 1.5),
        EditMode("magicbrush", "MagicBrush-style: 50 guided steps", 50, 1, 7.5, 1.5),
    )
}
ONE_STEP_MODE = "ipnet"


@dataclass
class BenchContext:
    """What a benchmark case gets: the pipeline and one (size, batch, option) setting."""

    pipe: Any
    settings: BenchSettings
    device: torch.device
    width: int
    height: int
    batch_size: int
    option: str
    components: ComponentTimes | None = None
    _calls: dict[str, Callable[[], Any]] | None = None

    def time(self, fn: Callable[[], Any], **kw: Any) -> Timing:
        """:func:`time_call` with the run's warm-up, repeats and device."""
        kw.setdefault("warmup", self.settings.warmup)
        kw.setdefault("repeats", self.settings.repeats)
        return time_call(fn, device=self.device, **kw)


@dataclass(frozen=True)
class BenchCase:
    """A named benchmark: ``run(context) -> dict`` of figures (one JSON row).

    ``needs_components``: the component times are measured first (edit modes use them for
    the ideal time).
    """

    name: str
    description: str
    run: Callable[[BenchContext], dict[str, Any]]
    needs_components: bool = False


CASES: dict[str, BenchCase] = {}
#: Modules that register more cases when imported (e.g. training-step costs); a listed module
#: that is not installed is skipped.
CASE_MODULES: tuple[str, ...] = ()


def register_case(case: BenchCase) -> BenchCase:
    """Add a case to :data:`CASES` (the extension point); returns it."""
    CASES[case.name] = case
    return case


def available_cases() -> dict[str, BenchCase]:
    """Every registered case, after importing :data:`CASE_MODULES`."""
    for module in CASE_MODULES:
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(module)
    return CASES


def _bench_image(width: int, height: int) -> Any:
    """A deterministic RGB test pattern (speed does not depend on the content)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin((x + y) / 7.0)], -1
    )
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def steps_to_run(mode: EditMode, max_steps: int | None) -> int:
    """The steps actually run: the mode's, capped at ``max_steps`` for multi-step modes."""
    if mode.steps == 1 or max_steps is None:
        return mode.steps
    return max(1, min(mode.steps, max_steps))


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def mode_components(mode: EditMode) -> tuple[str, ...]:
    """The :class:`ComponentTimes` fields a mode's ideal time uses."""
    if mode.guided:
        return ("text_encode_guided", "vae_encode", "unet_guided_step", "vae_decode")
    return ("text_encode", "vae_encode", "unet_step", "vae_decode")


def run_edit_mode(ctx: BenchContext, mode: EditMode) -> dict[str, Any]:
    """Time one edit mode end to end (PIL in, PIL out) with its split, memory and ideal.

    Each timed repeat first times the mode's components once each, then the mode once: the
    ideal and the measured time are paired samples, taken under the same machine load (a
    shared machine's slow spells then move both alike). The UNet's component call reuses the
    UNet input of the mode's first call (captured by a hook), so the ideal is timed on the
    very tensors the pipeline feeds. Efficiency compares the medians (``efficiency``) and the
    minimums (``efficiency_min``).
    """
    pipe, settings, device = ctx.pipe, ctx.settings, ctx.device
    steps = steps_to_run(mode, settings.max_steps)
    images = [_bench_image(ctx.width, ctx.height)] * ctx.batch_size

    def call() -> Any:
        return pipe(
            settings.prompt,
            images,
            num_inference_steps=steps,
            guidance_scale=mode.guidance_scale,
            image_guidance_scale=mode.image_guidance_scale,
            iterations=mode.iterations,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="pil",
            resolution=None,
        )

    needed = mode_components(mode)
    calls = dict(component_calls(ctx))
    unet_key = "unet_guided_step" if mode.guided else "unet_step"
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def capture(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not captured:  # the mode's own first UNet input, reused for the UNet's component time
            captured.append((args, dict(kwargs)))
            a, kw = captured[0]
            calls[unet_key] = torch.no_grad()(lambda: pipe.unet(*a, **kw))

    samples: dict[str, list[float]] = {k: [] for k in needed}
    latencies: list[float] = []
    clock = ComponentClock(pipeline_modules(pipe), device)

    def components(record: bool) -> None:
        clock.active = False
        for k in needed:
            dt = _timed(calls[k], device)
            if record:
                samples[k].append(dt)

    def mode_call(record: bool) -> None:
        clock.active = True
        dt = _timed(call, device)
        if record:
            latencies.append(dt)

    handle = pipe.unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad(), PeakMemory(device) as memory, clock:
            for i in range(settings.warmup + settings.repeats):
                record = i >= settings.warmup
                if i == settings.warmup:
                    clock.reset()
                if i == 0:  # the mode first, to capture its UNet input
                    mode_call(record)
                    handle.remove()
                    components(record)
                else:
                    components(record)
                    mode_call(record)
            spent = clock.totals()
            counted = dict(clock.calls)
    finally:
        handle.remove()
    timing = Timing(tuple(latencies))
    n = len(latencies)
    split = {k: v / n for k, v in spent.items()}
    split["other"] = max(0.0, timing.mean - sum(split.values()))
    base = ctx.components or ComponentTimes(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    paired = dataclasses.replace(base, **{k: statistics.median(v) for k, v in samples.items()})
    fastest = dataclasses.replace(base, **{k: min(v) for k, v in samples.items()})
    ideal_run = ideal_seconds(paired, steps=steps, iterations=mode.iterations, guided=mode.guided)
    ideal_full = ideal_seconds(
        paired, steps=mode.steps, iterations=mode.iterations, guided=mode.guided
    )
    text = paired.text_encode_guided if mode.guided else paired.text_encode
    fixed = text + mode.iterations * (paired.vae_encode + paired.vae_decode)
    full = timing.median
    if steps < mode.steps:
        full = extrapolate_steps(timing.median, fixed, steps, mode.steps)
    best = ideal_seconds(fastest, steps=steps, iterations=mode.iterations, guided=mode.guided)
    return {
        "steps": mode.steps,
        "steps_run": steps,
        "iterations": mode.iterations,
        "guidance_scale": mode.guidance_scale,
        "image_guidance_scale": mode.image_guidance_scale,
        "branches": mode.branches,
        "unet_calls": mode.iterations * mode.steps,
        "unet_calls_run": counted["unet"] // n,
        "unet_images": mode.iterations * mode.steps * mode.branches * ctx.batch_size,
        "latency_s": timing.as_dict(),
        "full_length_s": full,
        "extrapolated": steps < mode.steps,
        "images_per_s": ctx.batch_size / full,
        "split_s": split,
        "peak_memory_gb": memory.peak_gb,
        "peak_memory_kind": memory.kind,
        "ideal_components_s": {k: Timing(tuple(v)).as_dict() for k, v in samples.items()},
        "ideal_s": ideal_run,
        "ideal_full_length_s": ideal_full,
        "efficiency": efficiency(ideal_run, timing.median),
        "efficiency_min": efficiency(best, timing.min),
    }


def _edit_case(mode: EditMode) -> BenchCase:
    return BenchCase(mode.name, mode.description, lambda ctx: run_edit_mode(ctx, mode), True)


for _mode in EDIT_MODES.values():
    register_case(_edit_case(_mode))


def component_calls(ctx: BenchContext) -> dict[str, Callable[[], Any]]:
    """One call of each component at the context's size and batch, keyed like
    :class:`ComponentTimes` (inputs made once; cached on the context)."""
    if ctx._calls is not None:
        return ctx._calls
    pipe, device, b, prompt = ctx.pipe, ctx.device, ctx.batch_size, ctx.settings.prompt
    dtype = pipe.unet.dtype
    h, w = ctx.height // pipe.vae_scale_factor, ctx.width // pipe.vae_scale_factor
    gen = torch.Generator("cpu").manual_seed(0)
    pixels = (torch.rand(b, 3, ctx.height, ctx.width, generator=gen) * 2 - 1).to(device)
    latents = torch.randn(b, pipe.vae.config.latent_channels, h, w, generator=gen)
    latents = latents.to(device, dtype)
    x1 = torch.randn(b, pipe.unet.config.in_channels, h, w, generator=gen).to(device, dtype)
    x3 = torch.cat([x1, x1, x1])
    t = torch.tensor(999, device=device)
    with torch.no_grad():
        ctx1 = pipe._text_embeddings([prompt], device).expand(b, -1, -1)
    ctx3 = torch.cat([ctx1, ctx1, ctx1])

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        return torch.no_grad()(fn)

    ctx._calls = {
        "text_encode": no_grad(lambda: pipe._text_embeddings([prompt], device)),
        "text_encode_guided": no_grad(lambda: pipe._text_embeddings([prompt, ""], device)),
        "vae_encode": no_grad(lambda: pipe.encode_image(pixels)),
        "unet_step": no_grad(
            lambda: pipe.unet(x1, t, encoder_hidden_states=ctx1, return_dict=False)
        ),
        "unet_guided_step": no_grad(
            lambda: pipe.unet(x3, t, encoder_hidden_states=ctx3, return_dict=False)
        ),
        "vae_decode": no_grad(lambda: pipe.decode_latents(latents)),
    }
    return ctx._calls


def measure_components(ctx: BenchContext) -> tuple[ComponentTimes, dict[str, Any]]:
    """Time each component alone at the context's size and batch (see :class:`ComponentTimes`);
    sets ``ctx.components`` (the medians) and returns them with every timing."""
    timings = {k: ctx.time(fn) for k, fn in component_calls(ctx).items()}
    ctx.components = ComponentTimes(**{k: v.median for k, v in timings.items()})
    return ctx.components, {f"{k}_s": v.as_dict() for k, v in timings.items()}
