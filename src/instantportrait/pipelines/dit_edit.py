"""What the DiT edit pipelines share (:class:`~.kontext_edit.KontextEditPipeline`,
:class:`~.qwen_edit.QwenEditPipeline`): the defaults stored in
``model_index.json``, diffusers' call properties, the output size and the teacher's noise
levels. Each pipeline keeps its own encoding, guidance and denoising loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch

from ..backbones.flow_backbone import scheduler_shift_mu
from ..errors import InputError
from ..io import ResolutionPolicy

__all__ = ["DiTEditMixin"]


class DiTEditMixin:
    """Mixed into a ``DiffusionPipeline`` with a rectified-flow ``backbone`` and a
    ``scheduler``; ``recommended_steps`` and ``default_guidance_scale`` are in its config."""

    config: Any
    backbone: Any
    scheduler: Any
    _num_timesteps: int = 0
    _guidance_scale: float = 1.0

    @property
    def recommended_steps(self) -> int:
        """Steps used when ``num_inference_steps`` is not given (1 = the one-step student)."""
        return int(self.config.recommended_steps)

    @property
    def default_guidance_scale(self) -> float:
        """The guidance used when ``guidance_scale`` is not given (Kontext: the distilled
        input; Qwen-Image-Edit: the true-CFG scale, 1 = none)."""
        return float(self.config.default_guidance_scale)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    def _size(
        self,
        image: PIL.Image.Image,
        height: int | None,
        width: int | None,
        resolution: int | None = None,
    ) -> tuple[int, int]:
        """The output's (height, width): given, or the image's (its long side at
        ``resolution``), rounded down to the latent patch (VAE factor x 2)."""
        multiple = self.backbone.vae_scale_factor * 2
        w, h = image.size
        if resolution is not None and height is None and width is None:
            w, h = ResolutionPolicy(long_side=resolution, multiple=multiple).target_size(w, h)
        height, width = height or h, width or w
        if height < multiple or width < multiple:
            raise InputError(f"image size {width}x{height}: at least {multiple} px a side")
        return height // multiple * multiple, width // multiple * multiple

    def sigmas(self, steps: int, image_seq_len: int) -> torch.Tensor:
        """The teacher's noise levels for ``steps`` steps, descending, the final 0 included:
        the scheduler's shift at ``mu`` (linear in the token count) and whatever else its
        config sets (Qwen-Image's terminal stretch)."""
        mu = scheduler_shift_mu(image_seq_len, self.scheduler.config)
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return self.scheduler.sigmas
