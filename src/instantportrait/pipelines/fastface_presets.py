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
from dataclasses import dataclass
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
            guidance = _preset_file()["guidance"][guidance]
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
