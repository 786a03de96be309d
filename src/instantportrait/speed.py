"""Speed features every entry point can turn on: ``pipe.enable_speed(preset or options)``.

One registry (:data:`FEATURES`) of opt-in speed features for the edit pipeline, each an
``apply(pipe, options) -> undo`` function, used by ``edit``, ``edit-video``, the benchmark and
any app: half precision (``fp16``, ``bf16``), ``channels-last`` memory format, attention
kernels (``sdpa``, ``attn-classic``), ``fuse-qkv`` projections, VAE ``slicing``/``tiling``, the
``tiny-vae`` decoder (TAESD), ``cudnn-benchmark``, ``torch.compile`` in three modes and
``cuda-graphs`` replay. Named presets (:data:`PRESETS`) bundle them:

========== ==========================================================================
preset     features (those a device cannot run are skipped, and reported as skipped)
========== ==========================================================================
``none``   nothing: the plain float32 pipeline (the default)
``safe``   ``fp16`` on CUDA, ``channels-last``, ``sdpa``, ``fuse-qkv``: same images up to
           rounding
``fast``   ``safe`` + ``tiny-vae`` (TAESD decodes: small colour differences) + cuDNN autotune
``max``    ``fast`` + ``cuda-graphs`` (fixed shapes: a new size captures a new graph)
========== ==========================================================================

``fp16``/``bf16`` named one by one run anywhere (CPU half precision is slow but correct); a
preset does not pick them off CUDA. Features that
need CUDA (``cuda-graphs``, ``cudnn-benchmark``, ``compile-reduce-overhead``) raise
:class:`~instantportrait.errors.InputError` when named on another device, and are skipped by
presets. Everything applied is undone by :meth:`SpeedState.undo` (``pipe.disable_speed()``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .cuda_graphs import CUDAGraphModule
from .errors import InputError, first_line

__all__ = [
    "FEATURES",
    "PRESETS",
    "CUDAGraphModule",
    "SpeedFeature",
    "SpeedOptions",
    "SpeedState",
    "applied",
    "enable_speed",
    "load_tiny_vae",
    "parse_features",
    "register_feature",
    "resolve_speed",
]


class _HasTinyVAE(Protocol):
    tiny_vae: str | None


@dataclass
class SpeedOptions:
    """Settings some features read: ``tiny_vae``, the AutoencoderTiny (TAESD) weights
    (folder or Hub id; ``None`` builds TAESD's architecture with random weights, for speed
    measurements only)."""

    tiny_vae: str | os.PathLike | None = None


@dataclass(frozen=True)
class SpeedFeature:
    """An opt-in speed feature: ``apply(pipe, options) -> undo`` (restores the plain pipeline).

    Attributes:
        name, description: as listed by ``instantportrait bench --list``.
        apply: turns it on; returns the function that turns it off.
        gpu_only: the benchmark measures it on CUDA only (reported skipped elsewhere, with
            ``reason``).
        needs_cuda: it cannot run elsewhere (asking for it on another device is an error).
        order: combined features apply in this order (dtype first, compile and graphs last).
    """

    name: str
    description: str
    apply: Callable[[Any, Any], Callable[[], None]]
    gpu_only: bool = False
    reason: str = ""
    order: int = 5
    needs_cuda: bool = False


FEATURES: dict[str, SpeedFeature] = {}


def register_feature(feature: SpeedFeature) -> SpeedFeature:
    """Add a speed feature to :data:`FEATURES` (the extension point); returns it."""
    FEATURES[feature.name] = feature
    return feature


def _dtype_option(dtype: torch.dtype) -> Callable[[Any, _HasTinyVAE], Callable[[], None]]:
    def apply(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
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


def _channels_last(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
    modules = [pipe.unet, pipe.vae]
    for m in modules:
        m.to(memory_format=torch.channels_last)

    def undo() -> None:
        for m in modules:
            m.to(memory_format=torch.contiguous_format)

    return undo


def _attention(kind: str) -> Callable[[Any, _HasTinyVAE], Callable[[], None]]:
    def apply(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        saved = {m: dict(m.attn_processors) for m in (pipe.unet, pipe.vae)}
        for m in saved:
            m.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())

        def undo() -> None:
            for m, processors in saved.items():
                m.set_attn_processor(processors)

        return undo

    return apply


def _fuse_qkv(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
    pipe.unet.fuse_qkv_projections()
    return pipe.unet.unfuse_qkv_projections


def _vae_slicing(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
    pipe.vae.enable_slicing()
    return pipe.vae.disable_slicing


def _vae_tiling(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
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
            f"{path}: could not load AutoencoderTiny weights ({first_line(exc, 160)}); "
            "pass a diffusers AutoencoderTiny folder such as a copy of madebyollin/taesd"
        ) from exc


def _tiny_vae(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
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


def _compile(mode: str | None) -> Callable[[Any, _HasTinyVAE], Callable[[], None]]:
    def apply(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
        return _swap_modules(pipe, lambda m: torch.compile(m, mode=mode))

    return apply


def _cuda_graphs(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
    return _swap_modules(pipe, CUDAGraphModule)


def _cudnn_benchmark(pipe: Any, settings: _HasTinyVAE) -> Callable[[], None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True

    def undo() -> None:
        torch.backends.cudnn.benchmark = before

    return undo


_NO_GPU = "not measured: no GPU"
for _feature in (
    SpeedFeature(
        "fp16",
        "float16 weights and activations",
        _dtype_option(torch.float16),
        True,
        _NO_GPU + " (CPU half precision is emulated, slow)",
        0,
    ),
    SpeedFeature(
        "bf16",
        "bfloat16 weights and activations",
        _dtype_option(torch.bfloat16),
        True,
        _NO_GPU + " (CPU bfloat16 needs AMX to pay off)",
        0,
    ),
    SpeedFeature(
        "channels-last", "UNet and VAE in channels-last memory format", _channels_last, order=1
    ),
    SpeedFeature(
        "sdpa",
        "torch scaled_dot_product_attention processors (AttnProcessor2_0)",
        _attention("sdpa"),
        order=2,
    ),
    SpeedFeature(
        "attn-classic",
        "explicit softmax(QK^T)V attention (the pre-SDPA reference)",
        _attention("classic"),
        order=2,
    ),
    SpeedFeature("fuse-qkv", "UNet attention with fused QKV projections", _fuse_qkv, order=2),
    SpeedFeature("vae-slicing", "VAE decodes a batch one image at a time", _vae_slicing, order=3),
    SpeedFeature("vae-tiling", "VAE encodes/decodes large images in tiles", _vae_tiling, order=3),
    SpeedFeature(
        "tiny-vae",
        "decode with AutoencoderTiny (TAESD; --tiny-vae PATH for weights)",
        _tiny_vae,
        order=4,
    ),
    SpeedFeature(
        "cudnn-benchmark",
        "cuDNN autotuned convolutions",
        _cudnn_benchmark,
        True,
        _NO_GPU,
        6,
        needs_cuda=True,
    ),
    SpeedFeature(
        "compile",
        "torch.compile (default mode) of UNet, VAE encoder and decoder",
        _compile(None),
        True,
        _NO_GPU + " (compile is measured on CUDA only)",
        9,
    ),
    SpeedFeature(
        "compile-reduce-overhead",
        "torch.compile mode=reduce-overhead (CUDA graphs)",
        _compile("reduce-overhead"),
        True,
        _NO_GPU,
        9,
        needs_cuda=True,
    ),
    SpeedFeature(
        "compile-max-autotune",
        "torch.compile mode=max-autotune",
        _compile("max-autotune"),
        True,
        _NO_GPU,
        9,
    ),
    SpeedFeature(
        "cuda-graphs",
        "UNet, VAE encoder and decoder replayed as CUDA graphs",
        _cuda_graphs,
        True,
        _NO_GPU,
        10,
        needs_cuda=True,
    ),
):
    register_feature(_feature)


def parse_features(spec: str | Sequence[str], *, flag: str = "--options") -> list[SpeedFeature]:
    """``"fp16+channels-last+compile"`` (or a list of names) -> the features, in apply order.

    Underscores read as dashes (``channels_last`` is ``channels-last``).
    """
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    names = [str(n).strip().replace("_", "-") for n in parts if str(n).strip()]
    unknown = [n for n in names if n not in FEATURES]
    if not names or unknown:
        raise InputError(
            f"{flag} {spec!r}: unknown option {', '.join(unknown) or '(empty)'}; "
            f"choose from {', '.join(FEATURES)} (join several with '+')"
        )
    return sorted((FEATURES[n] for n in dict.fromkeys(names)), key=lambda o: o.order)


@contextlib.contextmanager
def applied(pipe: Any, features: Sequence[SpeedFeature], options: Any) -> Iterator[None]:
    """Apply ``features`` for the block, then undo them in reverse order."""
    undos: list[Callable[[], None]] = []
    try:
        for feature in features:
            undos.append(feature.apply(pipe, options))
        yield
    finally:
        for undo in reversed(undos):
            undo()


#: Named bundles of features (module docstring). ``cuda_only`` ones are kept only on CUDA.
PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "safe": ("fp16", "channels-last", "sdpa", "fuse-qkv"),
    "fast": ("fp16", "channels-last", "sdpa", "fuse-qkv", "tiny-vae", "cudnn-benchmark"),
    "max": (
        "fp16",
        "channels-last",
        "sdpa",
        "fuse-qkv",
        "tiny-vae",
        "cudnn-benchmark",
        "cuda-graphs",
    ),
}
#: Preset members that a preset applies only on CUDA (half precision is slow on CPU).
_PRESET_CUDA_ONLY = frozenset({"fp16", "bf16"})


def _device_of(pipe: Any) -> torch.device:
    first = next(pipe.unet.parameters())
    return first.device


def resolve_speed(
    speed: str | Sequence[str] | None, device: torch.device | str, *, flag: str = "--speed"
) -> tuple[list[SpeedFeature], list[tuple[str, str]]]:
    """The features ``speed`` names on ``device``, and those skipped with the reason.

    ``speed`` is a preset name (:data:`PRESETS`), a ``"+"``-joined feature list, a list of
    feature names, or ``None``/``"none"``. Presets skip what the device cannot run or would
    run slowly; features named one by one are all applied, except that one needing CUDA on
    another device raises :class:`InputError` naming it.
    """
    device = torch.device(device)
    if speed is None or (isinstance(speed, str) and speed.strip() in ("", "none")):
        return [], []
    skipped: list[tuple[str, str]] = []
    if isinstance(speed, str) and speed.strip() in PRESETS:
        wanted = []
        for name in PRESETS[speed.strip()]:
            feature = FEATURES[name]
            if device.type != "cuda" and (feature.needs_cuda or name in _PRESET_CUDA_ONLY):
                skipped.append((name, f"not on {device.type}"))
            else:
                wanted.append(name)
        return (parse_features(wanted, flag=flag) if wanted else []), skipped
    try:
        features = parse_features(speed, flag=flag)
    except InputError as exc:
        raise InputError(f"{exc} or a preset ({', '.join(PRESETS)})") from None
    for feature in features:
        if feature.needs_cuda and device.type != "cuda":
            raise InputError(
                f"{flag}: {feature.name} needs a CUDA device, the model is on {device}"
            )
    return features, skipped


@dataclass
class SpeedState:
    """What :func:`enable_speed` did: the features applied, those skipped, and the undo."""

    applied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _undos: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def undo(self) -> None:
        """Turn every applied feature off again, last first."""
        while self._undos:
            self._undos.pop()()
        self.applied.clear()

    def describe(self) -> str:
        """One line: ``speed: fp16, channels-last (skipped: cuda-graphs: not on cpu)``."""
        text = ", ".join(self.applied) or "none"
        if self.skipped:
            text += " (skipped: " + "; ".join(f"{n}: {why}" for n, why in self.skipped) + ")"
        return f"speed: {text}"


def enable_speed(
    pipe: Any,
    speed: str | Sequence[str] | None = "safe",
    *,
    tiny_vae: str | os.PathLike | None = None,
    flag: str = "--speed",
) -> SpeedState:
    """Turn on a preset or a list of speed features on ``pipe`` (already on its device).

    Args:
        pipe: an :class:`~instantportrait.pipelines.InstantPortraitPipeline`.
        speed: a preset (``none``, ``safe``, ``fast``, ``max``), ``"a+b"`` or a list of names.
        tiny_vae: AutoencoderTiny weights for ``tiny-vae`` (a folder or Hub id). A preset
            that includes ``tiny-vae`` skips it when none is given (random TAESD weights only
            make sense for speed measurements); naming ``tiny-vae`` alone without weights
            raises :class:`InputError`.
        flag: how to call the setting in messages.

    Returns:
        A :class:`SpeedState`; ``state.undo()`` restores the plain pipeline.
    """
    features, skipped = resolve_speed(speed, _device_of(pipe), flag=flag)
    preset = isinstance(speed, str) and speed.strip() in PRESETS
    if tiny_vae is None and any(f.name == "tiny-vae" for f in features):
        if not preset:
            raise InputError(
                f"{flag}: tiny-vae needs AutoencoderTiny weights (--tiny-vae PATH, a copy of "
                "madebyollin/taesd)"
            )
        features = [f for f in features if f.name != "tiny-vae"]
        skipped.append(("tiny-vae", "no --tiny-vae weights given"))
    state = SpeedState(skipped=skipped)
    options = SpeedOptions(tiny_vae=tiny_vae)
    try:
        for feature in features:
            state._undos.append(feature.apply(pipe, options))
            state.applied.append(feature.name)
    except BaseException:
        state.undo()
        raise
    return state
