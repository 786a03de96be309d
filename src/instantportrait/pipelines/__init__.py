"""Pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from typing import Any

from .edit import InstantPortraitPipeline, InstantPortraitPipelineOutput
from .loading import load_edit_pipeline

__all__ = [
    "DIIRPipeline",
    "FastFacePipeline",
    "InstantPortraitPipeline",
    "InstantPortraitPipelineOutput",
    "load_edit_pipeline",
]


def __getattr__(name: str) -> Any:
    # SDXL's pipeline imports transformers' image processors: only when FastFace is used.
    if name == "FastFacePipeline":
        from .fastface import FastFacePipeline

        return FastFacePipeline
    if name == "DIIRPipeline":
        from .restore import DIIRPipeline

        return DIIRPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
