"""The Kontext IDE-Net trainer's former home: the trainer is the DiT one
(:mod:`~instantportrait.training.dit_idenet`), for FLUX.1 Kontext and Qwen-Image-Edit alike."""

from .dit_idenet import DiTIDENetTrainer, KontextIDENetTrainer

__all__ = ["DiTIDENetTrainer", "KontextIDENetTrainer"]
