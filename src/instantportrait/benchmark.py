"""Speed and memory of the edit pipeline: timings, peak memory, component split, ideal ratios.

The suite measures :class:`~instantportrait.pipelines.InstantPortraitPipeline` end to end (PIL
image in, PIL image out, prompt encoding included) in the modes people compare
(:data:`EDIT_MODES`), at each resolution and batch size, plain and with each opt-in speed
option (:data:`OPTIONS`), and writes every figure to one JSON document. Speed does not depend
on the weights' values, so the real-size architectures built from config with random weights
(:func:`~instantportrait.components.build_components`) give the real figures.

**Ideal time and achieved/ideal.** The components are also timed alone at the same size and
batch: text encoding (1 text; 2 for guided modes: the prompt and the empty prompt), VAE encode,
one UNet call at batch B (one branch) and at batch 3B (InstructPix2Pix's three guided
branches), VAE decode. They are timed once as a table (``components``) and again inside each
mode's run, interleaved with it: every timed repeat times the mode's components once, then the
mode once, so the two are paired samples under the same machine load. A mode's *ideal* time
is what its components alone cost (medians of the paired samples)::

    ideal = text + iterations * (encode + steps * unet + decode)

(``unet`` the one- or three-branch call). ``efficiency`` (reported as *achieved/ideal*) is
``ideal / measured`` = achieved throughput / ideal throughput: 1.0 means the pipeline adds no
overhead beyond its components (scheduler, guidance arithmetic, pre- and post-processing,
synchronisation), 0.9 means 10% of the time goes elsewhere. Both sides use medians;
``efficiency_min`` is the same from minimums, a check on a noisy machine. Mode-to-mode ratios
are reported
both measured (``ratio_to_one_step``: a mode's time over the 1-step mode's) and ideal
(``ideal_ratio_to_one_step``).

**Step caps.** ``max_steps`` runs the multi-step modes with fewer steps (CPU runs at real
size); their full-length time is then extrapolated with the measured per-step cost
(:func:`extrapolate_steps`) and the row says ``extrapolated: true``. Efficiency is always from
what was run.

**Extension point.** Benchmark cases are registered by name (:func:`register_case`); the
edit modes are the built-in cases. A module listed in :data:`CASE_MODULES` is imported on
first use, so training-step costs (IDE-Net with and without the identity term, the IPNet
stages) plug in as cases of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError

SCHEMA = "instantportrait.bench/1"
DEFAULT_PROMPT = "wearing a 1920s flapper dress, feathered headband"
#: The paper's resolutions (width, height).
FULL_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 512), (1024, 576))
#: ``--quick``: one small resolution per size, so CPU runs finish in minutes.
QUICK_RESOLUTION = {"tiny": (64, 64), "real": (128, 128)}
#: ``--quick`` at real size caps the multi-step modes at this many steps (extrapolated).
QUICK_MAX_STEPS = 4

# ====================================================================== arithmetic


@dataclass(frozen=True)
class ComponentTimes:
    """Seconds of each component called alone at one size and batch size B.

    Attributes:
        text_encode: the text encoder on the prompt (1 text: a batch of one prompt).
        text_encode_guided: on the prompt and the empty prompt (2 texts, guided modes).
        vae_encode: VAE encode of B images.
        unet_step: one UNet call at batch B (one branch: no guidance).
        unet_guided_step: one UNet call at batch 3B (the three InstructPix2Pix branches).
        vae_decode: VAE (or latent-decoder) decode of B latents.
    """

    text_encode: float
    text_encode_guided: float
    vae_encode: float
    unet_step: float
    unet_guided_step: float
    vae_decode: float


def ideal_seconds(c: ComponentTimes, *, steps: int, iterations: int, guided: bool) -> float:
    """A mode's time if it cost only its components (module docstring).

    ``text + iterations * (encode + steps * unet + decode)`` with the guided (batch-3B) UNet
    call and two texts when ``guided``, else the batch-B call and one text.
    """
    text = c.text_encode_guided if guided else c.text_encode
    unet = c.unet_guided_step if guided else c.unet_step
    return text + iterations * (c.vae_encode + steps * unet + c.vae_decode)


def efficiency(ideal_s: float, measured_s: float) -> float:
    """Achieved/ideal: ``ideal / measured`` (1.0 = no overhead beyond the components)."""
    if measured_s <= 0:
        raise ValueError(f"measured time must be positive, got {measured_s}")
    return ideal_s / measured_s


def speed_ratio(mode_s: float, reference_s: float) -> float:
    """How many times the reference's time a mode takes (e.g. a mode over the 1-step mode)."""
    if reference_s <= 0:
        raise ValueError(f"reference time must be positive, got {reference_s}")
    return mode_s / reference_s


def extrapolate_steps(measured_s: float, fixed_s: float, steps_run: int, steps: int) -> float:
    """Full-length time of a mode run with ``steps_run`` of its ``steps`` steps.

    Everything beyond the step-independent part ``fixed_s`` (text, encode, decode: ideal
    component times) is charged to the steps, so the measured per-step cost including its
    overhead is ``(measured - fixed) / steps_run``; the result is
    ``fixed + steps * per_step``.
    """
    if steps_run < 1 or steps < steps_run:
        raise ValueError(f"need 1 <= steps_run <= steps, got {steps_run}, {steps}")
    per_step = (measured_s - fixed_s) / steps_run
    return fixed_s + steps * per_step


# ====================================================================== timing


@dataclass(frozen=True)
class Timing:
    """Seconds of repeated calls: the median, the spread, and every sample."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def std(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    @property
    def iqr(self) -> float:
        """Interquartile range (0 with fewer than 4 samples)."""
        if len(self.samples) < 4:
            return 0.0
        q = statistics.quantiles(self.samples, n=4)
        return q[2] - q[0]

    @property
    def spread(self) -> float:
        """``(max - min) / median``: the relative range of the samples."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "iqr": self.iqr,
            "spread": self.spread,
            "repeats": len(self.samples),
            "samples": list(self.samples),
        }


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA, MPS); nothing on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - no MPS here
        torch.mps.synchronize()


def time_call(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    after_warmup: Callable[[], None] | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones (device-synced)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if after_warmup is not None:
        after_warmup()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return Timing(tuple(samples))


# ====================================================================== memory


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set size (Linux ``clear_refs``); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


def peak_rss_bytes() -> int:
    """Peak resident set size: ``VmHWM`` (resettable) on Linux, else ``ru_maxrss``."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class PeakMemory:
    """Peak memory of a block: CUDA peak allocated on a CUDA device, peak RSS otherwise.

    ``kind`` says which: ``cuda_peak_allocated``, ``cpu_peak_rss`` (reset at the block's
    start) or ``cpu_peak_rss_since_start`` (no reset possible: the process's lifetime peak).
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.kind = ""
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_peak_allocated"
        else:
            self.kind = "cpu_peak_rss" if reset_peak_rss() else "cpu_peak_rss_since_start"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_bytes = peak_rss_bytes()

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 1024**3


# ====================================================================== component split


class ComponentClock:
    """Time spent inside named modules during a block, from forward hooks.

    On CUDA the hooks record events (no synchronisation inside the timed run; the totals are
    read after it); elsewhere they read the wall clock. Calls are counted too; while
    ``active`` is False nothing is recorded.
    """

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device | str):
        self.modules = {k: m for k, m in modules.items() if m is not None}
        self.cuda = torch.device(device).type == "cuda"
        self._handles: list[Any] = []
        self._open: dict[str, list[Any]] = {}
        self._spans: dict[str, list[Any]] = {}
        self.calls: dict[str, int] = {}
        self.active = True  # hooks record only while active
        self.reset()

    def reset(self) -> None:
        """Forget what was recorded (e.g. the warm-up calls)."""
        self._spans = {k: [] for k in self.modules}
        self._open = {k: [] for k in self.modules}
        self.calls = dict.fromkeys(self.modules, 0)

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def __enter__(self) -> ComponentClock:
        for name, module in self.modules.items():

            def pre(_m, _a, name=name):
                if self.active:
                    self._open[name].append(self._now())

            def post(_m, _a, _o, name=name):
                if not self.active:
                    return
                start = self._open[name].pop()
                self._spans[name].append((start, self._now()))
                self.calls[name] += 1

            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def totals(self) -> dict[str, float]:
        """Seconds spent in each module since the last :meth:`reset`."""
        if self.cuda:
            torch.cuda.synchronize()
            return {
                k: sum(a.elapsed_time(b) for a, b in spans) / 1000.0
                for k, spans in self._spans.items()
            }
        return {k: sum(b - a for a, b in spans) for k, spans in self._spans.items()}


def pipeline_modules(pipe: Any) -> dict[str, torch.nn.Module]:
    """The modules whose time the split reports: text encoder, VAE encoder, UNet, decoder."""
    decoder = getattr(pipe, "_latent_decoder", None) or pipe.vae
    return {
        "text_encode": pipe.text_encoder,
        "vae_encode": pipe.vae.encoder,
        "unet": pipe.unet,
        "vae_decode": decoder.decoder,
    }


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
        from .guidance import needs_three_branches

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


# ====================================================================== options


@dataclass(frozen=True)
class BenchOption:
    """An opt-in speed option: ``apply(pipe, settings) -> undo`` (restores the plain pipeline).

    ``gpu_only`` options are reported as skipped, with ``reason``, on other devices.
    ``order`` sorts combined options (dtype first, compilation and graphs last).
    """

    name: str
    description: str
    apply: Callable[[Any, BenchSettings], Callable[[], None]]
    gpu_only: bool = False
    reason: str = ""
    order: int = 5


OPTIONS: dict[str, BenchOption] = {}


def register_option(option: BenchOption) -> BenchOption:
    """Add a speed option to :data:`OPTIONS`; returns it."""
    OPTIONS[option.name] = option
    return option


def _dtype_option(dtype: torch.dtype) -> Callable[[Any, BenchSettings], Callable[[], None]]:
    def apply(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
        before = pipe.unet.dtype
        decoder = getattr(pipe, "_latent_decoder", None)
        pipe.to(dtype=dtype)
        if decoder is not None:
            decoder.to(dtype=dtype)

        def undo() -> None:
            pipe.to(dtype=before)
            if decoder is not None:
                decoder.to(dtype=before)

        return undo

    return apply


def _channels_last(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
    modules = [pipe.unet, pipe.vae]
    for m in modules:
        m.to(memory_format=torch.channels_last)

    def undo() -> None:
        for m in modules:
            m.to(memory_format=torch.contiguous_format)

    return undo


def _attention(kind: str) -> Callable[[Any, BenchSettings], Callable[[], None]]:
    def apply(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        saved = {m: dict(m.attn_processors) for m in (pipe.unet, pipe.vae)}
        for m in saved:
            m.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())

        def undo() -> None:
            for m, processors in saved.items():
                m.set_attn_processor(processors)

        return undo

    return apply


def _fuse_qkv(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
    pipe.unet.fuse_qkv_projections()
    return pipe.unet.unfuse_qkv_projections


def _vae_slicing(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
    pipe.vae.enable_slicing()
    return pipe.vae.disable_slicing


def _vae_tiling(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
    pipe.vae.enable_tiling()
    return pipe.vae.disable_tiling


def load_tiny_vae(path: str | os.PathLike | None = None) -> torch.nn.Module:
    """``AutoencoderTiny`` (TAESD) from a folder or Hub id, or at TAESD's size with random
    weights when ``path`` is None (speed does not depend on the weights)."""
    from diffusers import AutoencoderTiny

    from .errors import ModelNotFoundError

    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return AutoencoderTiny().eval()
    try:
        return AutoencoderTiny.from_pretrained(str(path)).eval()
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{path}: could not load AutoencoderTiny weights ({str(exc).splitlines()[0][:160]}); "
            "pass a diffusers AutoencoderTiny folder such as a copy of madebyollin/taesd"
        ) from exc


def _tiny_vae(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
    pipe.set_latent_decoder(load_tiny_vae(settings.tiny_vae))
    return lambda: pipe.set_latent_decoder(None)


def _swap_modules(
    pipe: Any, wrap: Callable[[torch.nn.Module], torch.nn.Module]
) -> Callable[[], None]:
    """Wrap the UNet, the VAE's encoder and decoder, and a latent decoder's decoder if one is
    set (``tiny-vae``); returns the undo."""
    unet, encoder, decoder = pipe.unet, pipe.vae.encoder, pipe.vae.decoder
    latent_decoder = getattr(pipe, "_latent_decoder", None)
    tiny = None if latent_decoder is None else latent_decoder.decoder
    pipe.unet = wrap(unet)
    pipe.vae.encoder = wrap(encoder)
    pipe.vae.decoder = wrap(decoder)
    if latent_decoder is not None:
        latent_decoder.decoder = wrap(tiny)

    def undo() -> None:
        pipe.unet = unet
        pipe.vae.encoder = encoder
        pipe.vae.decoder = decoder
        if latent_decoder is not None:
            latent_decoder.decoder = tiny

    return undo


def _compile(mode: str | None) -> Callable[[Any, BenchSettings], Callable[[], None]]:
    def apply(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
        return _swap_modules(pipe, lambda m: torch.compile(m, mode=mode))

    return apply


class CUDAGraphModule(torch.nn.Module):
    """Runs ``module`` by replaying a CUDA graph captured per input signature.

    The first call with new shapes, dtypes or non-tensor arguments warms the module up on a
    side stream and captures one forward; later calls copy their tensors into the captured
    static inputs, replay, and return a copy of the static output. For inference at fixed
    shapes on CUDA (the launch overhead of a one-step UNet then vanishes). Attributes the
    wrapper lacks (``config``, ``dtype``...) are read from the wrapped module.
    """

    def __init__(self, module: torch.nn.Module, warmup: int = 3):
        super().__init__()
        self.module = module
        self.warmup = warmup
        self._graphs: dict[Any, tuple[Any, ...]] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    @staticmethod
    def _key(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type)
        if isinstance(value, (list, tuple)):
            return tuple(CUDAGraphModule._key(v) for v in value)
        return ("value", repr(value))

    @staticmethod
    def _static(value: Any, device: torch.device) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().to(device).clone()
        return value

    @staticmethod
    def _copy(static: Any, value: Any) -> None:
        if isinstance(static, torch.Tensor):
            static.copy_(value)

    @staticmethod
    def _clone(out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return out.clone()
        if isinstance(out, (list, tuple)):
            return type(out)(CUDAGraphModule._clone(o) for o in out)
        return out

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        device = next(self.module.parameters()).device
        s_args = tuple(self._static(a, device) for a in args)
        s_kwargs = {k: self._static(v, device) for k, v in kwargs.items()}
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.module(*s_args, **s_kwargs)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            s_out = self.module(*s_args, **s_kwargs)
        return s_args, s_kwargs, graph, s_out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        key = (self._key(args), tuple((k, self._key(v)) for k, v in sorted(kwargs.items())))
        if key not in self._graphs:
            self._graphs[key] = self._capture(args, kwargs)
        s_args, s_kwargs, graph, s_out = self._graphs[key]
        for static, value in zip(s_args, args):
            self._copy(static, value)
        for name, value in kwargs.items():
            self._copy(s_kwargs[name], value)
        graph.replay()
        return self._clone(s_out)


def _cuda_graphs(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
    return _swap_modules(pipe, CUDAGraphModule)


def _cudnn_benchmark(pipe: Any, settings: BenchSettings) -> Callable[[], None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True

    def undo() -> None:
        torch.backends.cudnn.benchmark = before

    return undo


_NO_GPU = "not measured: no GPU"
for _opt in (
    BenchOption(
        "fp16",
        "float16 weights and activations",
        _dtype_option(torch.float16),
        True,
        _NO_GPU + " (CPU half precision is emulated, slow)",
        0,
    ),
    BenchOption(
        "bf16",
        "bfloat16 weights and activations",
        _dtype_option(torch.bfloat16),
        True,
        _NO_GPU + " (CPU bfloat16 needs AMX to pay off)",
        0,
    ),
    BenchOption(
        "channels-last", "UNet and VAE in channels-last memory format", _channels_last, order=1
    ),
    BenchOption(
        "sdpa",
        "torch scaled_dot_product_attention processors (AttnProcessor2_0)",
        _attention("sdpa"),
        order=2,
    ),
    BenchOption(
        "attn-classic",
        "explicit softmax(QK^T)V attention (the pre-SDPA reference)",
        _attention("classic"),
        order=2,
    ),
    BenchOption("fuse-qkv", "UNet attention with fused QKV projections", _fuse_qkv, order=2),
    BenchOption("vae-slicing", "VAE decodes a batch one image at a time", _vae_slicing, order=3),
    BenchOption("vae-tiling", "VAE encodes/decodes large images in tiles", _vae_tiling, order=3),
    BenchOption(
        "tiny-vae",
        "decode with AutoencoderTiny (TAESD; --tiny-vae PATH for weights)",
        _tiny_vae,
        order=4,
    ),
    BenchOption(
        "cudnn-benchmark", "cuDNN autotuned convolutions", _cudnn_benchmark, True, _NO_GPU, 6
    ),
    BenchOption(
        "compile",
        "torch.compile (default mode) of UNet, VAE encoder and decoder",
        _compile(None),
        True,
        _NO_GPU + " (compile is measured on CUDA only)",
        9,
    ),
    BenchOption(
        "compile-reduce-overhead",
        "torch.compile mode=reduce-overhead (CUDA graphs)",
        _compile("reduce-overhead"),
        True,
        _NO_GPU,
        9,
    ),
    BenchOption(
        "compile-max-autotune",
        "torch.compile mode=max-autotune",
        _compile("max-autotune"),
        True,
        _NO_GPU,
        9,
    ),
    BenchOption(
        "cuda-graphs",
        "UNet, VAE encoder and decoder replayed as CUDA graphs",
        _cuda_graphs,
        True,
        _NO_GPU,
        10,
    ),
):
    register_option(_opt)


def parse_option(spec: str) -> list[BenchOption]:
    """``"fp16+channels-last+compile"`` -> the options, sorted by their ``order``.

    Underscores read as dashes (``channels_last`` is ``channels-last``).
    """
    names = [n.strip().replace("_", "-") for n in spec.split("+") if n.strip()]
    unknown = [n for n in names if n not in OPTIONS]
    if not names or unknown:
        raise InputError(
            f"--options {spec!r}: unknown option {', '.join(unknown) or '(empty)'}; "
            f"choose from {', '.join(OPTIONS)} (join several with '+')"
        )
    return sorted((OPTIONS[n] for n in dict.fromkeys(names)), key=lambda o: o.order)


@contextlib.contextmanager
def applied(pipe: Any, options: Sequence[BenchOption], settings: BenchSettings) -> Iterator[None]:
    """Apply ``options`` for the block, then undo them in reverse order."""
    undos: list[Callable[[], None]] = []
    try:
        for option in options:
            undos.append(option.apply(pipe, settings))
        yield
    finally:
        for undo in reversed(undos):
            undo()


# ====================================================================== settings and run


def parse_resolution(text: str) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"1024x576"`` -> (1024, 576) (width x height, multiples of 8)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise InputError(
            f"--resolutions {text!r}: give WIDTHxHEIGHT or one side, e.g. 512"
        ) from None
    if len(parts) > 2 or w < 8 or h < 8 or w % 8 or h % 8:
        raise InputError(f"--resolutions {text!r}: both sides must be multiples of 8, at least 8")
    return w, h


@dataclass
class BenchSettings:
    """Everything a run depends on; validated by :meth:`validate`, saved in the JSON.

    Attributes:
        size: ``tiny`` or ``real`` (SD1.5-InstructPix2Pix built from config, random weights).
        model: a pipeline folder or Hub id to load instead of building ``size``.
        quick: one small resolution (:data:`QUICK_RESOLUTION`), and at real size the
            multi-step modes capped at :data:`QUICK_MAX_STEPS` steps unless ``max_steps``.
        modes: case names (:data:`CASES`); default the five edit modes.
        batch_sizes, resolutions ((width, height)), repeats, warmup: the grid and its timing.
        max_steps: cap on the multi-step modes' steps (the rest extrapolated).
        device, dtype: where and in what precision the plain run happens.
        options: speed options, each measured against the plain run ("a+b" combines).
        tiny_vae: AutoencoderTiny weights for the ``tiny-vae`` option (random when None).
        prompt: the instruction edited.
    """

    size: str = "tiny"
    model: str | None = None
    quick: bool = False
    modes: list[str] = field(default_factory=lambda: list(EDIT_MODES))
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    resolutions: list[tuple[int, int]] | None = None
    repeats: int = 3
    warmup: int = 1
    max_steps: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    options: list[str] = field(default_factory=list)
    tiny_vae: str | None = None
    prompt: str = DEFAULT_PROMPT

    def validate(self) -> BenchSettings:
        """Fill defaults that depend on other settings; raise :class:`InputError` naming the
        flag for a bad value."""
        if self.size not in ("tiny", "real"):
            raise InputError(f"--size: tiny or real, got {self.size!r}")
        cases = available_cases()
        unknown = [m for m in self.modes if m not in cases]
        if not self.modes or unknown:
            raise InputError(
                f"--modes: unknown {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(cases)}"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError(f"--batch-sizes: positive integers, got {self.batch_sizes}")
        if self.repeats < 1:
            raise InputError(f"--repeats: at least 1, got {self.repeats}")
        if self.warmup < 0:
            raise InputError(f"--warmup: at least 0, got {self.warmup}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"--max-steps: at least 1, got {self.max_steps}")
        if self.resolutions is None:
            self.resolutions = (
                [QUICK_RESOLUTION[self.size]] if self.quick else list(FULL_RESOLUTIONS)
            )
        self.resolutions = [tuple(r) for r in self.resolutions]  # type: ignore[misc]
        if self.quick and self.size == "real" and self.max_steps is None:
            self.max_steps = QUICK_MAX_STEPS
        for spec in self.options:
            parse_option(spec)
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise InputError(f"--dtype: float32, float16 or bfloat16, got {self.dtype!r}")
        return self

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolutions"] = [f"{w}x{h}" for w, h in self.resolutions or []]
        return d


def machine_report(device: torch.device) -> dict[str, Any]:
    """The machine: processor, cores, memory, and the accelerator when there is one."""
    info: dict[str, Any] = {
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _total_memory_gb(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = props.total_memory / 1024**3
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _total_memory_gb() -> float | None:
    kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kb = int(line.split()[1])
    return None if kb is None else kb / 1024**2


def build_pipeline(settings: BenchSettings, device: torch.device, dtype: torch.dtype) -> Any:
    """The pipeline to measure: ``settings.model`` loaded, else ``settings.size`` built."""
    from .components import build_components
    from .pipelines import InstantPortraitPipeline

    if settings.model:
        pipe = InstantPortraitPipeline.from_pretrained(settings.model)
    else:
        size = "tiny" if settings.size == "tiny" else "instruct-pix2pix"
        pipe = InstantPortraitPipeline(**build_components(size, seed=0))
    pipe.set_progress_bar_config(disable=True)
    return place(pipe, device, dtype)


def place(pipe: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move the pipeline to ``device``/``dtype`` unless it is there already."""
    first = next(pipe.unet.parameters())
    same_device = first.device.type == device.type and (
        device.index is None or first.device.index == device.index
    )
    if not same_device or first.dtype != dtype:
        pipe.to(device=device, dtype=dtype)
    return pipe


def _one_step_ratios(rows: list[dict[str, Any]]) -> None:
    """Add each edit row's time over the 1-step mode's (measured and ideal), per group."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("case") == ONE_STEP_MODE and r.get("status") == "measured":
            groups[(r["option"], r["resolution"], r["batch_size"])] = r
    for r in rows:
        ref = groups.get((r["option"], r["resolution"], r["batch_size"]))
        if r.get("status") != "measured" or ref is None or "full_length_s" not in r:
            continue
        r["ratio_to_one_step"] = speed_ratio(r["full_length_s"], ref["full_length_s"])
        r["ideal_ratio_to_one_step"] = speed_ratio(
            r["ideal_full_length_s"], ref["ideal_full_length_s"]
        )


def _option_speedups(rows: list[dict[str, Any]]) -> None:
    """Add each option row's speed-up over the plain row of the same case, size and batch."""
    plain = {
        (r["case"], r["resolution"], r["batch_size"]): r
        for r in rows
        if r["option"] == "plain" and r.get("status") == "measured"
    }
    for r in rows:
        ref = plain.get((r["case"], r["resolution"], r["batch_size"]))
        if r.get("status") == "measured" and ref is not None:
            r["speedup_vs_plain"] = ref["latency_s"]["median"] / r["latency_s"]["median"]


def gpu_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, met or not, or ``not measured`` with the reason."""
    rows = [r for r in results["cases"] if r.get("status") == "measured"]
    cuda = results["machine"]["device"].startswith("cuda")
    half = [
        r
        for r in rows
        if r["case"] == ONE_STEP_MODE
        and (
            r["dtype"] in ("float16", "bfloat16") or any(o in r["option"] for o in ("fp16", "bf16"))
        )
    ]

    def best(res: str) -> dict[str, Any] | None:
        cands = [r for r in half if r["resolution"] == res]
        return max(cands, key=lambda r: r["images_per_s"]) if cands else None

    targets = []
    for res, goal in (("512x512", 100.0), ("1024x576", 40.0)):
        r = best(res) if cuda else None
        entry = {"target": f"one-step images/s at {res}, fp16/bf16, GPU", "goal": f">= {goal:g}"}
        if r is None:
            entry.update(
                value=None,
                status=_NO_GPU
                if not cuda
                else f"not measured: run {res} with --options fp16 (or bf16)",
            )
        else:
            ok = r["images_per_s"] >= goal
            entry.update(
                value=r["images_per_s"],
                status="met" if ok else "not met",
                where=f"{r['option']}, batch {r['batch_size']}",
            )
        targets.append(entry)
    mem = [r for r in half if r["resolution"] == "512x512" and r["batch_size"] == 1]
    entry = {"target": "peak GPU memory at 512x512, batch 1, fp16/bf16 (GB)", "goal": "<= 4"}
    if not cuda or not mem:
        entry.update(value=None, status=_NO_GPU if not cuda else "not measured: run 512 fp16")
    else:
        low = min(mem, key=lambda r: r["peak_memory_gb"])
        entry.update(
            value=low["peak_memory_gb"],
            status="met" if low["peak_memory_gb"] <= 4 else "not met",
            where=low["option"],
        )
    targets.append(entry)
    if not cuda:
        effs = [r["efficiency"] for r in rows if "efficiency" in r and r["option"] == "plain"]
        entry = {"target": "CPU achieved/ideal, every mode", "goal": ">= 0.9"}
        tiny = results["model"]["unet_parameters"] < 100_000_000
        if effs:
            status = "met" if min(effs) >= 0.9 else "not met"
            if tiny:
                status += " (small test components: fixed per-call costs dominate)"
            entry.update(value=min(effs), status=status)
        else:
            entry.update(value=None, status="not measured: no edit mode was run")
        targets.append(entry)
    return targets


def run_benchmark(
    settings: BenchSettings, pipe: Any | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Run the suite; returns the results document (see :func:`write_results`).

    Args:
        settings: what to run (validated here).
        pipe: a pipeline to measure (default: built or loaded from ``settings``); it is
            moved to the settings' device and dtype, and options are undone afterwards.
        progress: a progress bar on stderr.
    """
    from tqdm.auto import tqdm

    from .cli.common import resolve_device
    from .cli.env import environment_report

    settings.validate()
    device = resolve_device(settings.device)
    dtype = getattr(torch, settings.dtype)
    started = time.perf_counter()
    pipe = build_pipeline(settings, device, dtype) if pipe is None else place(pipe, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    cases = available_cases()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_report(device),
        "versions": environment_report(),
        "settings": settings.as_dict(),
        "model": {
            "name": settings.model
            or ("tiny" if settings.size == "tiny" else "SD1.5-InstructPix2Pix (random weights)"),
            "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "attention_processor": type(next(iter(pipe.unet.attn_processors.values()))).__name__,
        },
        "components": [],
        "cases": [],
        "options": [],
    }
    configs = [("plain", [])] + [(spec, parse_option(spec)) for spec in settings.options]
    grid = [(w, h, b) for (w, h) in settings.resolutions or [] for b in settings.batch_sizes]
    bar = tqdm(
        total=len(configs) * len(grid) * len(settings.modes),
        desc="bench",
        unit="case",
        disable=not progress,
        file=sys.stderr,
    )
    for label, options in configs:
        gpu_only = [o for o in options if o.gpu_only and device.type != "cuda"]
        entry = {"option": label, "options": [o.name for o in options]}
        if gpu_only:
            entry.update(status="skipped", reason=f"{gpu_only[0].name}: {gpu_only[0].reason}")
            results["options"].append(entry)
            for w, h, b in grid:
                for name in settings.modes:
                    results["cases"].append(
                        {
                            "case": name,
                            "option": label,
                            "resolution": f"{w}x{h}",
                            "batch_size": b,
                            "dtype": settings.dtype,
                            "status": "skipped",
                            "reason": entry["reason"],
                        }
                    )
            bar.update(len(grid) * len(settings.modes))
            continue
        entry.update(status="measured", reason="")
        results["options"].append(entry)
        with applied(pipe, options, settings):
            for w, h, b in grid:
                ctx = BenchContext(pipe, settings, device, w, h, b, label)
                base = {
                    "option": label,
                    "resolution": f"{w}x{h}",
                    "width": w,
                    "height": h,
                    "batch_size": b,
                    "dtype": settings.dtype,
                }
                if any(cases[m].needs_components for m in settings.modes):
                    bar.set_postfix_str(f"{label} {w}x{h} b{b} components")
                    ctx.components, detail = measure_components(ctx)
                    results["components"].append(
                        {**base, **dataclasses.asdict(ctx.components), "timings": detail}
                    )
                for name in settings.modes:
                    bar.set_postfix_str(f"{label} {w}x{h} b{b} {name}")
                    row = cases[name].run(ctx)
                    results["cases"].append({"case": name, **base, "status": "measured", **row})
                    bar.update(1)
    bar.close()
    _one_step_ratios(results["cases"])
    _option_speedups(results["cases"])
    results["targets"] = gpu_targets(results)
    results["total_s"] = time.perf_counter() - started
    return results


# ====================================================================== output

SPLIT_KEYS = ("text_encode", "vae_encode", "unet", "vae_decode", "other")


def _fmt(x: float | None) -> str:
    """A figure for the tables: 3 significant digits or so, ``-`` for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    mag = abs(x)
    if mag == 0 or mag >= 100:
        return f"{x:.0f}"
    decimals = 1 if mag >= 10 else 2 if mag >= 1 else 3
    return f"{x:.{decimals}f}"


def format_tables(results: dict[str, Any]) -> str:
    """The results as Markdown tables: modes (plain), options, targets."""
    lines: list[str] = []
    m = results["model"]
    s = results["settings"]
    lines.append(
        f"{m['name']}, {results['machine']['device']} {s['dtype']}, "
        f"median of {s['repeats']} after {s['warmup']} warm-up"
        + (
            f", multi-step modes run {s['max_steps']} steps (rest extrapolated, *)"
            if s.get("max_steps")
            else ""
        )
    )
    edits = [r for r in results["cases"] if "split_s" in r or r["case"] in EDIT_MODES]
    plain = [r for r in edits if r["option"] == "plain" and "split_s" in r]
    if plain:
        lines += [
            "",
            "| mode | size | batch | steps | UNet calls | latency s (min-max) | img/s "
            "| text / enc / UNet / dec / other s | peak GB | x 1-step | ideal x 1-step "
            "| achieved/ideal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in plain:
            lat = r["latency_s"]
            sp = r["split_s"]
            star = " *" if r.get("extrapolated") else ""
            full = r.get("full_length_s", lat["median"])
            latency = (
                f"{_fmt(full)}{star}"
                if r.get("extrapolated")
                else f"{_fmt(lat['median'])} ({_fmt(lat['min'])}-{_fmt(lat['max'])})"
            )
            steps = str(r["steps"])
            if r["steps_run"] != r["steps"]:
                steps += f" ({r['steps_run']} run)"
            split = " / ".join(_fmt(sp[k]) for k in SPLIT_KEYS)
            lines.append(
                f"| {r['case']} | {r['resolution']} | {r['batch_size']} | {steps} "
                f"| {r['unet_calls']} x {r['branches']} | {latency} "
                f"| {_fmt(r['images_per_s'])} | {split} "
                f"| {_fmt(r['peak_memory_gb'])} | {_fmt(r.get('ratio_to_one_step'))} "
                f"| {_fmt(r.get('ideal_ratio_to_one_step'))} | {_fmt(r.get('efficiency'))} |"
            )
    others = [r for r in edits if r["option"] != "plain"]
    if others:
        lines += [
            "",
            "| option | mode | size | batch | latency s | img/s | speed-up vs plain "
            "| achieved/ideal | status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in others:
            if r.get("status") != "measured":
                lines.append(
                    f"| {r['option']} | {r['case']} | {r['resolution']} | {r['batch_size']} "
                    f"| - | - | - | - | {r['reason']} |"
                )
                continue
            lines.append(
                f"| {r['option']} | {r['case']} | {r['resolution']} | {r['batch_size']} "
                f"| {_fmt(r.get('full_length_s', r['latency_s']['median']))} "
                f"| {_fmt(r['images_per_s'])} "
                f"| {_fmt(r.get('speedup_vs_plain'))} | {_fmt(r.get('efficiency'))} "
                "| measured |"
            )
    extra = [r for r in results["cases"] if r not in edits and r.get("status") == "measured"]
    if extra:
        lines += ["", "| case | option | size | batch | figures |", "|---|---|---|---|---|"]
        for r in extra:
            skip = {
                "case",
                "option",
                "resolution",
                "width",
                "height",
                "batch_size",
                "dtype",
                "status",
            }
            figures = ", ".join(
                f"{k}={_fmt(v['median'] if isinstance(v, dict) and 'median' in v else v)}"
                for k, v in r.items()
                if k not in skip
                and (isinstance(v, (int, float)) or (isinstance(v, dict) and "median" in v))
            )
            lines.append(
                f"| {r['case']} | {r['option']} | {r['resolution']} | {r['batch_size']} "
                f"| {figures} |"
            )
    if results.get("targets"):
        lines += ["", "| target | goal | value | status |", "|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['goal']} | {_fmt(t['value'])} | {t['status']} |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the results as JSON, atomically."""
    from .io import atomic_write

    text = json.dumps(results, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
