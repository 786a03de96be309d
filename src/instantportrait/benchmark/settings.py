"""What a benchmark run depends on (:class:`BenchSettings`), validated and saved in the JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..speed import PRESETS
from ..speed import parse_features as parse_option
from .cases import EDIT_MODES, available_cases

SCHEMA = "instantportrait.bench/1"
DEFAULT_PROMPT = "wearing a 1920s flapper dress, feathered headband"
#: The paper's resolutions (width, height).
FULL_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 512), (1024, 576))
#: ``--quick``: one small resolution per size, so CPU runs finish in minutes.
QUICK_RESOLUTION = {"tiny": (64, 64), "real": (128, 128)}
#: ``--quick`` at real size caps the multi-step modes at this many steps (extrapolated).
QUICK_MAX_STEPS = 4


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
            if spec not in PRESETS:
                parse_option(spec)
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise InputError(f"--dtype: float32, float16 or bfloat16, got {self.dtype!r}")
        return self

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolutions"] = [f"{w}x{h}" for w, h in self.resolutions or []]
        return d
