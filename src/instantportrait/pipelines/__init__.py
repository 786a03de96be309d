"""Pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from .edit import InstantPortraitPipeline, InstantPortraitPipelineOutput

__all__ = ["DIIRPipeline", "InstantPortraitPipeline", "InstantPortraitPipelineOutput"]


def __getattr__(name: str):
    if name == "DIIRPipeline":
        from .restore import DIIRPipeline

        return DIIRPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
