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
are reported both measured (``ratio_to_one_step``: a mode's time over the 1-step mode's) and
ideal (``ideal_ratio_to_one_step``). For small test components (a UNet under 100M parameters,
e.g. ``--size tiny``) the ratios are withheld (``None``, ``ratios_meaningful: false`` and a
``ratios_note``; ``n/a`` in the tables): fixed per-call costs dominate there and the component
clock and the end-to-end time stop measuring the same thing.

**Step caps.** ``max_steps`` runs the multi-step modes with fewer steps (CPU runs at real
size); their full-length time is then extrapolated with the measured per-step cost
(:func:`extrapolate_steps`) and the row says ``extrapolated: true``. Efficiency is always from
what was run.

**Layout.** :mod:`.timing` (timing and memory, ideal-time arithmetic), :mod:`.cases` (edit
modes and the case registry), :mod:`.settings`, :mod:`.run` (the suite), :mod:`.report`
(tables and JSON). The speed options are :mod:`instantportrait.speed`'s features, the same
ones ``edit --speed`` turns on.

**Extension point.** Benchmark cases are registered by name (:func:`register_case`); the
edit modes are the built-in cases. A module listed in :data:`CASE_MODULES` is imported on
first use, so training-step costs (IDE-Net with and without the identity term, the IPNet
stages) plug in as cases of their own.
"""

from __future__ import annotations

from ..speed import FEATURES as OPTIONS
from ..speed import (
    CUDAGraphModule,
    applied,
    load_tiny_vae,
)
from ..speed import SpeedFeature as BenchOption
from ..speed import parse_features as parse_option
from ..speed import register_feature as register_option
from .cases import (
    CASE_MODULES,
    CASES,
    EDIT_MODES,
    ONE_STEP_MODE,
    BenchCase,
    BenchContext,
    EditMode,
    available_cases,
    component_calls,
    measure_components,
    mode_components,
    register_case,
    run_edit_mode,
    steps_to_run,
)
from .report import SPLIT_KEYS, format_tables, write_results
from .run import build_pipeline, gpu_targets, place, run_benchmark
from .settings import (
    DEFAULT_PROMPT,
    FULL_RESOLUTIONS,
    QUICK_MAX_STEPS,
    QUICK_RESOLUTION,
    SCHEMA,
    BenchSettings,
    parse_resolution,
)
from .timing import (
    ComponentClock,
    ComponentTimes,
    PeakMemory,
    Timing,
    efficiency,
    extrapolate_steps,
    ideal_seconds,
    machine_report,
    peak_rss_bytes,
    pipeline_modules,
    reset_peak_rss,
    speed_ratio,
    synchronize,
    time_call,
)

__all__ = [
    "CASES",
    "CASE_MODULES",
    "DEFAULT_PROMPT",
    "EDIT_MODES",
    "FULL_RESOLUTIONS",
    "ONE_STEP_MODE",
    "OPTIONS",
    "QUICK_MAX_STEPS",
    "QUICK_RESOLUTION",
    "SCHEMA",
    "SPLIT_KEYS",
    "BenchCase",
    "BenchContext",
    "BenchOption",
    "BenchSettings",
    "CUDAGraphModule",
    "ComponentClock",
    "ComponentTimes",
    "EditMode",
    "PeakMemory",
    "Timing",
    "applied",
    "available_cases",
    "build_pipeline",
    "component_calls",
    "efficiency",
    "extrapolate_steps",
    "format_tables",
    "gpu_targets",
    "ideal_seconds",
    "load_tiny_vae",
    "machine_report",
    "measure_components",
    "mode_components",
    "parse_option",
    "parse_resolution",
    "peak_rss_bytes",
    "pipeline_modules",
    "place",
    "register_case",
    "register_option",
    "reset_peak_rss",
    "run_benchmark",
    "run_edit_mode",
    "speed_ratio",
    "steps_to_run",
    "synchronize",
    "time_call",
    "write_results",
]
