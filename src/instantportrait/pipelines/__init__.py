"""Pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from typing import Any

from .edit import InstantPortraitPipeline, InstantPortraitPipelineOutput

__all__ = ["FastFacePipeline", "InstantPortraitPipeline", "InstantPortraitPipelineOutput"]


def __getattr__(name: str) -> Any:
    # SDXL's pipeline imports transformers' image processors: only when FastFace is used.
    if name == "FastFacePipeline":
        from .fastface import FastFacePipeline

        return FastFacePipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
