"""IDE-Net on a DiT editor (FLUX.1 Kontext, Qwen-Image-Edit): the LoRA ``ide`` trained with
the flow-matching loss plus the annealing identity loss (InstantPortrait eq. 5 carried over to
rectified flow).

``L = ||v_hat - (eps - x0)||^2 + lambda_aid * W_a(sigma) * L_cid``, with x0 the target's
latents, sigma drawn by the backbone's own resolution-shifted schedule
(:func:`~instantportrait.training.dit_model.flow_training_sigmas` with its scheduler's config:
FLUX's or Qwen-Image's exponential shift), x0_hat = x_sigma - sigma v_hat decoded through the
face window, W_a the existing annealing forms at sigma with T_max = 1. Everything after x0_hat
(face window, identity loss, face-free rows, eq. 5) is
:class:`~instantportrait.training.idenet.IDENetTrainer`'s own code.

The prediction is one call: Kontext's with its distilled guidance input, Qwen-Image-Edit's
without CFG (the condition holds no negative prompt). The family comes from
``model.backbone``; the model's hooks carry the differences
(:class:`~instantportrait.training.dit_model.DiTModel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..parameterization import flow_noise, flow_velocity_target
from .dit_model import FAMILIES, model_class
from .dit_trainer import DiTTrainerMixin
from .idenet import IDENetConfig, IDENetTrainer


class DiTIDENetTrainer(DiTTrainerMixin, IDENetTrainer):
    """IDE-Net's stage on a DiT editor (``model.backbone``): only the LoRA ``ide`` learns."""

    #: IDE-Net's columns and the batch's mean sigma
    log_keys = (*IDENetTrainer.log_keys, "sigma")
    adapter_name = "ide"

    def __init__(self, config: IDENetConfig):
        if config.model.backbone not in FAMILIES:
            raise InputError(
                f"model.backbone={config.model.backbone}: the DiT trainer takes "
                f"{' or '.join(FAMILIES)}"
            )
        super().__init__(config)
        g = config.model.guidance
        self.guidance = model_class(config.model.backbone).default_guidance if g is None else g
        self.max_sequence_length = config.model.max_sequence_length

    def setup(self) -> None:
        cfg = self.cfg
        m = self.load_dit(cfg.model.backbone, cfg.model.pretrained, cfg.model.lora_rank)
        params = m.add_adapter("ide", trainable=True)
        if cfg.training.gradient_checkpointing:
            m.transformer.enable_gradient_checkpointing()
        m.transformer.train()
        self.embedder = self.build_embedder() if cfg.loss.lambda_aid > 0 else None
        if self.embedder is not None:
            self.embedder.requires_grad_(False).eval()
        self.build_dataset(cfg.data, need_faces=cfg.loss.lambda_aid > 0)
        if cfg.loss.lambda_aid > 0:
            from .loop import FaceCoverage

            self.coverage = FaceCoverage("identity")
        optimizer, lr_scheduler = self.make_optimizer(params)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            m.transformer, optimizer, lr_scheduler
        )
        self.use_prepared(self.model)

    def sample_sigmas(self, batch: int, latent_hw: tuple[int, int], generator) -> torch.Tensor:
        return self.dit_model.training_sigmas(batch, latent_hw, generator).to(self.device)

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Every term of eq. 5 on the flow parameterisation for one batch."""
        from diffusers.utils.torch_utils import randn_tensor

        mc = self.cfg.model
        x_in, keep, image_latents, cond = self.encode_pair(batch, mc.max_sequence_length)
        with torch.no_grad():
            x0 = self.backbone.encode_image(batch["target"].to(self.device)).float()
        noise = randn_tensor(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
        sigma = self.sample_sigmas(x0.shape[0], tuple(x0.shape[-2:]), generator)
        x_sigma = flow_noise(x0, noise, sigma.view(-1, 1, 1, 1))
        x = x_sigma.to(self.dit_model.dtype)
        v_hat = self.backbone.predict(x, sigma, cond, image_latents, self.guidance).float()
        l_dm = (v_hat - flow_velocity_target(x0, noise)).pow(2).mean()
        x0_of = lambda rows: self.backbone.x0(x_sigma[rows], sigma[rows], v_hat[rows])  # noqa: E731
        out = self.add_identity_terms({"l_dm": l_dm}, batch, x_in, keep, x0_of, sigma, 1.0)
        out["sigma"] = sigma.mean()
        return out

    def export(self, folder: Path) -> None:
        """The fused IDE-Net (a multi-step editor of the family, guided as its teacher) and
        ``ide_lora.safetensors`` (the IPNet teacher's adapter), the EMA's weights when the run
        keeps one."""
        meta = {"kind": "idenet", "guidance": self.guidance}
        meta["max_sequence_length"] = self.cfg.model.max_sequence_length
        self.dit_model.export(folder, "ide", self.exported_adapter(), meta)


#: the name of the first family's trainer, kept for existing imports
KontextIDENetTrainer = DiTIDENetTrainer
