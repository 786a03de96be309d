"""The Kontext trainers' mixin's former home: the mixin is the DiT one
(:mod:`~instantportrait.training.dit_trainer`), for FLUX.1 Kontext and Qwen-Image-Edit alike."""

from .dit_trainer import ADAPTERS_FILE, DiTTrainerMixin, KontextTrainerMixin

__all__ = ["ADAPTERS_FILE", "DiTTrainerMixin", "KontextTrainerMixin"]
