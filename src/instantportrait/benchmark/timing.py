"""Timing and memory: ideal-time arithmetic, timed calls, peak memory, the component clock,
and the machine report."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
