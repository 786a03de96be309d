"""Pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from .edit import InstantPortraitPipeline, InstantPortraitPipelineOutput
from .fastface import FastFacePipeline

__all__ = ["FastFacePipeline", "InstantPortraitPipeline", "InstantPortraitPipelineOutput"]
