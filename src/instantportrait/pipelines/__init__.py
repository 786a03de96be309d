"""Pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from .edit import InstantPortraitPipeline, InstantPortraitPipelineOutput

__all__ = ["InstantPortraitPipeline", "InstantPortraitPipelineOutput"]
