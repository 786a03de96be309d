"""Pipelines (diffusers ``DiffusionPipeline`` subclasses)."""

from .edit import InstantPortraitPipeline, InstantPortraitPipelineOutput
from .loading import load_edit_pipeline

__all__ = ["InstantPortraitPipeline", "InstantPortraitPipelineOutput", "load_edit_pipeline"]
