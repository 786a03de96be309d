"""IPNet on a DiT editor (FLUX.1 Kontext, Qwen-Image-Edit): the LoRA ``student`` distilled
into a one-step editor.

The student and the teacher share ONE base transformer (see
:mod:`~instantportrait.training.dit_model`): the teacher is base + ``ide`` (the IDE-Net
export's LoRA), the student base + ``student``, initialised from ``ide`` (or from the previous
stage's student). Only the rectified-flow pieces differ from
:class:`~instantportrait.training.ipnet.IPNetTrainer`, whose set-up, adversarial and triplet
terms, eq. 13 and training step run unchanged:

* the student: one call at sigma = 1 on pure noise, ``x_hat = eps - v_hat`` (spec §5);
* distillation: sigma' = t / 1000 with t in the stage's range; for sigma' > tau fresh noise
  ``z' = (1 - sigma') x_hat + sigma' eps``; for sigma' <= tau the teacher's own noise, by Euler
  steps of its velocity ODE from 0 up to sigma' (:func:`flow_inversion`); the target
  ``x_phi = z' - sigma' v_phi(z')``.

Guidance. FLUX.1 Kontext's is distilled into an input: every call (student, inversion,
target) gets the teacher's scale. Qwen-Image-Edit has no guidance input; its teacher is guided
by true CFG (the IDE-Net export's scale, default 4.0, and the negative prompt ``" "``, as its
editor runs it), which costs a second call. Decided here [rec]:

* the target's teacher prediction ``v_phi(z')`` is guided (two calls): the student learns to
  produce the guided teacher's result;
* the inversion's Euler steps are unguided (one call each): inverting with guidance
  accumulates error (Mokady et al. 2023, Null-text inversion: DDIM inversion is accurate at
  w = 1 and drifts for w > 1), and it halves the inversion's cost (4 calls instead of 8);
* the student runs ONE unguided call (no negative prompt): guidance is what it distils, and
  its export has true CFG off by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..parameterization import flow_noise, sigma_from_timestep
from .dit_model import FAMILIES, LORA_FILES, read_export_metadata
from .dit_trainer import DiTTrainerMixin
from .ipnet import IPNetConfig, IPNetTrainer


def flow_inversion(velocity, x0: torch.Tensor, sigma: torch.Tensor, steps: int) -> torch.Tensor:
    """Invert clean latents ``x0`` to noise level ``sigma`` (per row) along the teacher's
    velocity ODE, ``x <- x + (sigma / K) v(x, s_k)`` at ``s_k = k sigma / K``, k = 0..K-1
    (spec §5, the rectified-flow form of InstantPortrait eq. 9's DDIM inversion)."""
    x = x0
    step = sigma / steps
    for k in range(steps):
        s = step * k
        x = x + step.view(-1, *([1] * (x.ndim - 1))) * velocity(x, s)
    return x


class DiTIPNetTrainer(DiTTrainerMixin, IPNetTrainer):
    """One stage of IPNet on a DiT editor (the teacher export's family): only the LoRA
    ``student`` learns."""

    pipeline_config: dict[str, Any] = {}
    adapter_name = "student"

    def __init__(self, config: IPNetConfig):
        super().__init__(config)
        meta = read_export_metadata(config.teacher.path)
        if (
            meta.get("kind") != "idenet"
            or not meta.get("base")
            or meta.get("backbone") not in FAMILIES
        ):
            raise InputError(
                f"teacher.path={config.teacher.path}: not a DiT IDE-Net export "
                "(train idenet --set model.backbone=kontext or qwen-edit writes one)"
            )
        self.teacher_meta = meta
        self.family = meta["backbone"]
        self.guidance = float(meta.get("guidance") or 2.5)
        self.max_sequence_length = int(meta.get("max_sequence_length", 512))

    # ---- set-up -------------------------------------------------------------------------
    def build_models(self) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
        cfg, meta = self.cfg, self.teacher_meta
        m = self.load_dit(self.family, meta["base"], int(meta.get("lora_rank", 64)))
        # validation edits as the exported student will (Qwen: true CFG off)
        exported = m.export_settings({"kind": "ipnet", "guidance": self.guidance})
        self.edit_guidance = exported.get("default_guidance_scale", self.guidance)
        m.add_adapter("ide", trainable=False)
        m.load_adapter_file(Path(cfg.teacher.path) / LORA_FILES["ide"], "ide")
        m.add_adapter("student", trainable=True)
        if cfg.student.init:
            init = Path(cfg.student.init)
            init_meta = read_export_metadata(init)
            if init_meta.get("kind") != "ipnet" or init_meta.get("backbone") != self.family:
                raise InputError(f"student.init={init}: not an IPNet export of this teacher's")
            m.load_adapter_file(init / LORA_FILES["student"], "student")
            self.history = list(read_export_metadata(init).get("stages", []))
        else:
            m.copy_adapter("ide", "student")
            self.history = []
        m.transformer.set_adapter("student")
        m.set_trainable("student")
        if cfg.training.gradient_checkpointing:
            m.transformer.enable_gradient_checkpointing()
        m.transformer.train()
        return m.transformer, m.adapter_parameters("student")

    def setup(self) -> None:
        super().setup()
        self.use_prepared(self.model)

    # ---- the rectified-flow pieces ------------------------------------------------------
    def edit_condition(self, batch: dict[str, Any], x_in: torch.Tensor) -> tuple[Any, Any, Any]:
        """The image latents and the condition, with the guided teacher's negative (Qwen);
        the UNet's separate unconditional branch is unused (``None``)."""
        _, _, image_latents, cond = self.encode_pair(batch, self.max_sequence_length, True)
        return image_latents, cond, None

    def student_latent(self, noise, image_latents, cond) -> torch.Tensor:
        """x_hat_theta = eps - v_theta(eps, 1): the student's one step at sigma = 1, one call
        (Qwen: unguided; Kontext: the distilled guidance input)."""
        with self.dit_model.adapter("student"):
            ones = torch.ones(noise.shape[0], device=self.device)
            x = noise.to(self.dit_model.dtype)
            plain = self.dit_model.unguided(cond)
            v = self.backbone.predict(x, ones, plain, image_latents, self.guidance).float()
        return self.backbone.x0(noise.float(), ones, v)

    @torch.no_grad()
    def teacher_velocity(self, z, sigma, image_latents, cond) -> torch.Tensor:
        """v_phi(z, sigma): base + ``ide``, the student's adapter inactive; guided as
        ``cond`` allows (Qwen: true CFG when it holds the negative prompt)."""
        with self.dit_model.adapter("ide"):
            x = z.to(self.dit_model.dtype)
            return self.backbone.predict(x, sigma, cond, image_latents, self.guidance).float()

    @torch.no_grad()
    def distillation_target(self, z_hat, image_latents, cond, uncond, generator) -> dict[str, Any]:
        """x_phi(stopgrad(z')) with z' re-noised by fresh noise (sigma' > tau) or the teacher's
        inverted noise (sigma' <= tau); returns the latent, the sigma' and the inverted share."""
        st = self.cfg.stage
        z = z_hat.detach().float()
        bsz = z.shape[0]
        t = torch.randint(st.t_min, st.t_max + 1, (bsz,), generator=generator)
        sigma = sigma_from_timestep(t).float().to(self.device)
        tau = float(sigma_from_timestep(st.tau))
        eps = torch.randn(z.shape, generator=generator).to(z)
        z_s = flow_noise(z, eps, sigma.view(-1, 1, 1, 1))
        inv = (sigma <= tau).nonzero().flatten()
        if len(inv):
            sub_cond = self.dit_model.unguided(self.dit_model.condition_rows(cond, inv))

            def velocity(x, s):
                return self.teacher_velocity(x, s, image_latents[inv], sub_cond)

            z_s[inv] = flow_inversion(velocity, z[inv], sigma[inv], st.inversion_steps)
        v = self.teacher_velocity(z_s, sigma, image_latents, cond)
        target = self.backbone.x0(z_s, sigma, v)
        return {"latent": target, "t": sigma, "inversion_fraction": len(inv) / bsz}

    # ---- export -----------------------------------------------------------------------
    def export(self, folder: Path) -> None:
        """The one-step student: a fused folder and ``student_lora.safetensors`` (EMA weights
        when kept), with the stage history in ``instantportrait.json``."""
        st = self.cfg.stage
        record = {
            "stage": st.name,
            "sigma_range": [st.t_min / 1000, st.t_max / 1000],
            "tau": st.tau / 1000,
            "lambda_adv": st.lambda_adv,
            "lambda_distill": st.lambda_distill,
            "lambda_triplet": st.lambda_triplet,
            "inversion_steps": st.inversion_steps,
            "space": st.space,
            "steps": self.run.max_steps,
            "global_batch": self.run.batch_size
            * self.run.gradient_accumulation_steps
            * self.accelerator.num_processes,
        }
        meta = {
            "kind": "ipnet",
            "recommended_steps": 1,
            "guidance": self.guidance,
            "teacher": self.cfg.teacher.path,
            "stages": [*self.history, record],
        }
        self.dit_model.export(folder, "student", self.exported_adapter(), meta)


#: the name of the first family's trainer, kept for existing imports
KontextIPNetTrainer = DiTIPNetTrainer
