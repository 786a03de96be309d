"""FastFace's named configurations: checkpoint families and method presets, as data.

* :data:`FAMILIES`: the four few-step SDXL checkpoints of FastFace (spec §1; official code
  ``src/utils.py``): where the distilled weights come from, how they enter SDXL base, the
  scheduler and the resolution.
* :class:`FastFacePreset`: a guidance rule (DCG or none) plus an attention manipulation
  (:class:`~instantportrait.attention.AMPreset` or none). The published ones are read from
  ``configs/fastface.json``: ``baseline``, ``am1``, ``am1_paper``, ``am2``, ``am2_noadain``,
  ``dcg``, ``fastface-am1``, ``fastface-am2``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..attention import AMPreset, _preset_file, am_preset
from ..guidance import DCG_VARIANTS

__all__ = [
    "DEFAULT_ADAPTER",
    "DEFAULT_BASE",
    "DEFAULT_IMAGE_ENCODER",
    "FAMILIES",
    "DCGConfig",
    "FamilySpec",
    "FastFacePreset",
    "fastface_preset",
    "fastface_presets",
    "load_preset_file",
]

#: SDXL base, into which every distilled checkpoint is put.
DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
#: IP-Adapter FaceID-Plus-v2 for SDXL: (repo, weight file).
DEFAULT_ADAPTER = ("h94/IP-Adapter-FaceID", "ip-adapter-faceid-plusv2_sdxl.bin")
#: The CLIP ViT-H/14 image encoder of the Plus-v2 projection.
DEFAULT_IMAGE_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass(frozen=True)
class FamilySpec:
    """One few-step checkpoint family.

    Attributes:
        name: ``hyper``, ``lightning``, ``lcm`` or ``turbo``.
        source: the Hub repo (or a local folder laid out like it) of the distilled weights.
        weights: how they enter SDXL base: ``lora`` (fused at scale 1), ``unet_file`` (a
            UNet state dict replacing the base UNet's weights) or ``unet_folder`` (a diffusers
            ``unet/`` subfolder, with the family's own ``scheduler/``).
        weight_name: the file in ``source`` (``lora``/``unet_file``).
        scheduler: the diffusers scheduler class.
        scheduler_options: overrides on the base scheduler's config.
        resolution: the default image side.
        baseline_guidance: the CFG scale of the baseline (the code's ``reset_gs_to_default``).
        steps: the distilled step count.
    """

    name: str
    source: str
    weights: str
    weight_name: str | None
    scheduler: str
    scheduler_options: dict[str, Any]
    resolution: int
    baseline_guidance: float = 1.0
    steps: int = 4


FAMILIES: dict[str, FamilySpec] = {
    "hyper": FamilySpec(
        "hyper",
        "ByteDance/Hyper-SD",
        "lora",
        "Hyper-SDXL-4steps-lora.safetensors",
        "DDIMScheduler",
        {"timestep_spacing": "trailing"},
        1024,
    ),
    "lightning": FamilySpec(
        "lightning",
        "ByteDance/SDXL-Lightning",
        "unet_file",
        "sdxl_lightning_4step_unet.safetensors",
        "EulerDiscreteScheduler",
        {"timestep_spacing": "trailing"},
        1024,
    ),
    "lcm": FamilySpec(
        "lcm",
        "latent-consistency/lcm-lora-sdxl",
        "lora",
        "pytorch_lora_weights.safetensors",
        "LCMScheduler",
        {},
        1024,
        baseline_guidance=1.5,
    ),
    "turbo": FamilySpec(
        "turbo",
        "stabilityai/sdxl-turbo",
        "unet_folder",
        None,
        "EulerAncestralDiscreteScheduler",
        {},
        512,
    ),
}


@dataclass(frozen=True)
class DCGConfig:
    """FastFace's decoupled guidance settings: variant, alpha/beta per step, rescale phi."""

    variant: str = "dcg2"
    alpha: tuple[float, ...] = (1.0, 1.5, 1.5, 1.0)
    beta: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)
    rescale: float | None = 0.75

    def __post_init__(self) -> None:
        if self.variant not in DCG_VARIANTS:
            raise ValueError(f"DCG variant {self.variant!r}: one of {', '.join(DCG_VARIANTS)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DCGConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DCG config: unknown keys {unknown}")
        values = dict(data)
        for key in ("alpha", "beta"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


@dataclass(frozen=True)
class FastFacePreset:
    """A FastFace configuration: guidance (``None``: the family's baseline CFG) and AM."""

    name: str
    guidance: DCGConfig | None = None
    am: AMPreset | None = None
    description: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "custom") -> FastFacePreset:
        """From JSON-like data: ``guidance`` a DCG dict or a name of the file's guidances,
        ``am`` an AM preset dict or name."""
        known = {"guidance", "am", "description", "name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"FastFace preset {name!r}: unknown keys {unknown}")
        guidance = data.get("guidance")
        if isinstance(guidance, str):
            named = _preset_file()["guidance"]
            if guidance not in named:
                raise ValueError(f"guidance {guidance!r}: one of {', '.join(named)} or a DCG dict")
            guidance = named[guidance]
        if guidance is not None and not isinstance(guidance, dict):
            raise ValueError(f"guidance {guidance!r}: a name or a DCG dict")
        am = data.get("am")
        return cls(
            name=data.get("name", name),
            guidance=DCGConfig.from_dict(guidance) if guidance is not None else None,
            am=am_preset(am) if am is not None else None,
            description=data.get("description", ""),
        )


def fastface_presets() -> dict[str, FastFacePreset]:
    """The published presets, by name."""
    return {
        name: FastFacePreset.from_dict(data, name)
        for name, data in _preset_file()["presets"].items()
    }


def fastface_preset(preset: str | FastFacePreset | dict[str, Any]) -> FastFacePreset:
    """Resolve a preset by name, from data, or as it is; an unknown name lists the known."""
    if isinstance(preset, FastFacePreset):
        return preset
    if isinstance(preset, dict):
        return FastFacePreset.from_dict(preset)
    presets = fastface_presets()
    if preset not in presets:
        raise ValueError(f"preset {preset!r}: one of {', '.join(presets)}")
    return presets[preset]


def _check_value(where: str, value: Any, default: Any) -> None:
    """``value`` has the type of the field's ``default`` (numbers, flags, lists of them)."""
    number = (int, float)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, number):
        ok = isinstance(value, number) and not isinstance(value, bool)
    elif isinstance(default, dict):
        ok = isinstance(value, dict) and all(
            isinstance(v, number) and not isinstance(v, bool) for v in value.values()
        )
    elif isinstance(default, tuple) and default and isinstance(default[0], str):
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    elif isinstance(default, tuple) or default is None:
        ok = value is None or (
            isinstance(value, tuple)
            and all(isinstance(v, number) and not isinstance(v, bool) for v in value)
        )
    else:
        ok = True
    if not ok:
        raise ValueError(f"{where}: {value!r} is not a value of its kind")


def _check_types(preset: FastFacePreset) -> None:
    """Each field of the preset's guidance and AM holds a value of its kind (a preset file
    is untrusted input: a wrong type would otherwise fail mid-generation)."""
    for part, default in ((preset.guidance, DCGConfig()), (preset.am, AMPreset(name="x"))):
        if part is None:
            continue
        for f in dataclasses.fields(part):
            if f.name in ("name", "kind", "variant"):
                continue
            value = getattr(part, f.name)
            if f.name == "rescale" and value is None:
                continue
            _check_value(f"{type(part).__name__}.{f.name}", value, getattr(default, f.name))


def load_preset_file(path: str | os.PathLike, *, name: str = "--preset") -> FastFacePreset:
    """A custom :class:`FastFacePreset` from a JSON file (named after the file).

    ``name``: how messages call the file's source (the CLI option, an evaluation method).

    Raises:
        InputError: one line naming the file, for unreadable, non-JSON or malformed content.
    """
    from ..errors import InputError

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{name} {p}: cannot be read ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{name} {p}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{name} {p}: a JSON object with guidance and/or am is wanted")
    try:
        preset = FastFacePreset.from_dict(data | {"name": p.stem})
        _check_types(preset)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{name} {p}: {message}") from None
    return preset
