"""The Kontext IPNet trainer's former home: the trainer is the DiT one
(:mod:`~instantportrait.training.dit_ipnet`), for FLUX.1 Kontext and Qwen-Image-Edit alike."""

from .dit_ipnet import DiTIPNetTrainer, KontextIPNetTrainer, flow_inversion

__all__ = ["DiTIPNetTrainer", "KontextIPNetTrainer", "flow_inversion"]
