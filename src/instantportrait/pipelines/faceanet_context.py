"""FaceA-Net's context model G_c: any SDXL text-to-image pipeline (diffusers), or a tiny one.

``load_context_pipeline(spec)``: ``tiny`` builds a tiny random SDXL (tests: it draws noise, no
face, which exercises the no-face path); a folder or Hub id loads with
``StableDiffusionXLPipeline.from_pretrained``. Distilled 4-step SDXL checkpoints (Hyper,
Lightning, Turbo, LCM) are SDXL folders too: pass their folder; the context then costs 4
steps (give ``--context-steps 4 --context-guidance-scale 1``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..devices import diffusers_dtype
from ..errors import ModelNotFoundError


def tiny_sdxl_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusionXLPipeline``: the toolkit's tiny SDXL
    (``init-tiny --kind sdxl``), for tests and offline runs."""
    from diffusers import StableDiffusionXLPipeline

    from .fastface_tiny import build_tiny_sdxl

    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl(seed), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_context_pipeline(
    spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
):
    """G_c from ``spec``: ``tiny``, a few-step family name (``hyper``, ``lightning``, ``lcm``,
    ``turbo``: SDXL base plus the family's weights, as FastFace loads them), or an SDXL
    folder / Hub id (loaded on ``device``)."""
    if spec == "tiny":
        return tiny_sdxl_pipeline().to(device)
    from diffusers import StableDiffusionXLPipeline

    from .fastface_presets import FAMILIES

    if spec in FAMILIES:
        from .fastface_loading import load_sdxl_family

        pipe, _ = load_sdxl_family(spec, dtype=dtype, pipeline_class=StableDiffusionXLPipeline)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(spec, **diffusers_dtype(dtype))
    except (OSError, ValueError) as exc:
        hint = "no such folder" if not Path(spec).exists() else str(exc)
        raise ModelNotFoundError(
            f"--context-model {spec}: could not load an SDXL pipeline ({hint}); pass an SDXL "
            "diffusers folder or Hub id, `tiny` for a test model, or --context-image PHOTO"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def context_defaults(spec: str | None) -> dict[str, float | int]:
    """Steps, guidance and image side for the context model ``spec``: a few-step family's own
    (e.g. Hyper: 4 steps, CFG 1, 1024), else SDXL's usual 30 steps, CFG 5, 1024."""
    from .fastface_presets import FAMILIES

    if spec in FAMILIES:
        fam = FAMILIES[spec]
        return {"steps": fam.steps, "guidance_scale": fam.baseline_guidance, "size": fam.resolution}
    return {"steps": 30, "guidance_scale": 5.0, "size": 1024}
