"""IPNet (InstantPortrait stage 2): diffusion multi-objective distillation into a one-step
editor (§3.2, eqs. 6-13, Table 6, App. G.2).

The student epsilon_phi starts as a copy of the teacher IDE-Net's UNet (or the previous stage's
student) and edits in one step: pure noise at the student timestep (999) || the encoded input
image, the instruction -> x_hat_0 latent z_hat_phi -> decoded image x_hat_phi. Its loss
(eq. 13) is ``L_adv + lambda_distill L_distill + lambda_triplet L_triplet``:

* ``L_adv`` (eq. 6): hinge loss of an unconditional discriminator on random crops
  (:class:`~instantportrait.models.discriminator.CropDiscriminator`), real = target x,
  fake = x_hat_phi; the discriminator has its own optimizer and updates after the student.
* ``L_distill`` (eqs. 7-10): the frozen teacher's x_hat_theta from the student's latent
  re-noised to t in the stage's range, random noise for t > tau and the teacher's own epsilon
  (DDIM inversion, eq. 9) for t <= tau (tau = 200); pixel space by default.
* ``L_triplet`` (eqs. 11-12): DINOv2 features of face crops of input, output and target.

Three stages (Table 6), each resuming from the previous stage's student: see :data:`STAGES`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import DistributedType

from ..backbones.ip2p_unet import unet_on_channels
from ..losses.adversarial import hinge_discriminator_loss, hinge_generator_loss
from ..losses.distillation import ddim_inversion, distillation_loss, renoise_epsilon
from ..losses.triplet import face_style_distances, face_style_triplet_loss
from ..parameterization import add_noise, alpha_bar, predict_epsilon, predict_x0
from .config import check
from .editing import DataConfig, EditTrainer, ValidationConfig, tiny_hint
from .run_settings import OptimConfig, RunConfig
from .sharding import checkpoint_only, frozen, whole_unit

#: Table 6 of InstantPortrait (App. G.2). Global batch = batch_size x accumulation x processes:
#: the presets reach 256 / 256 / 2048 on one device by gradient accumulation; on N devices
#: divide ``gradient_accumulation_steps`` by N.
STAGES: dict[str, dict[str, Any]] = {
    "high": {
        "stage": {
            "name": "high",
            "t_min": 400,
            "t_max": 800,
            "lambda_distill": 1.0,
            "lambda_triplet": 0.0,
        },
        "training": {"max_steps": 25000, "batch_size": 8, "gradient_accumulation_steps": 32},
    },
    "middle": {
        "stage": {
            "name": "middle",
            "t_min": 200,
            "t_max": 400,
            "lambda_distill": 0.3,
            "lambda_triplet": 0.0,
        },
        "training": {"max_steps": 15000, "batch_size": 8, "gradient_accumulation_steps": 32},
    },
    "low": {
        "stage": {
            "name": "low",
            "t_min": 150,
            "t_max": 200,
            "lambda_distill": 0.3,
            "lambda_triplet": 1.0,
        },
        "training": {"max_steps": 1000, "batch_size": 8, "gradient_accumulation_steps": 256},
    },
}
STAGE_ORDER = ("high", "middle", "low")


@dataclass
class TeacherConfig:
    """The frozen IDE-Net and the guidance it distils with."""

    #: IDE-Net pipeline folder or Hub id; ``tiny`` builds tiny random components (tests)
    path: str = ""
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    seed: int = 0


@dataclass
class StudentConfig:
    #: a previous stage's student pipeline folder; default: a copy of the teacher's UNet
    init: str | None = None
    timestep: int = 999

    def __post_init__(self) -> None:
        check(0 <= self.timestep <= 999, "student.timestep: in [0, 999]")


@dataclass
class StageConfig:
    """One row of Table 6, and how distillation re-noises (eqs. 8-9)."""

    name: str = "high"
    t_min: int = 400
    t_max: int = 800
    lambda_adv: float = 1.0
    lambda_distill: float = 1.0
    lambda_triplet: float = 0.0
    tau: int = 200
    #: ``one_step``: eq. 9 (one teacher prediction at the clean latent); ``ddim``: K-step inversion
    inversion: Literal["one_step", "ddim"] = "one_step"
    inversion_steps: int = 4
    space: Literal["pixel", "latent"] = "pixel"

    def __post_init__(self) -> None:
        check(0 <= self.t_min <= self.t_max <= 999, "stage: need 0 <= t_min <= t_max <= 999")
        check(self.inversion_steps >= 1, "stage.inversion_steps: at least 1")
        for name in ("lambda_adv", "lambda_distill", "lambda_triplet"):
            check(getattr(self, name) >= 0, f"stage.{name}: must be >= 0")


@dataclass
class DiscriminatorConfig:
    #: DINOv2 folder or Hub id; ``tiny`` for a random tiny backbone (tests)
    backbone: str = "facebook/dinov2-small"
    crop_size: int = 224
    head_channels: int = 64
    layers: list[int] | None = None
    lr: float = 2e-5


@dataclass
class TripletConfig:
    #: DINOv2 folder or Hub id; ``tiny`` for a random tiny model (tests)
    dino: str = "facebook/dinov2-base"
    #: the margin m of eq. 12, on L2-normalised DINOv2 embeddings (distances in [0, 2]);
    #: choose it from the logged ``triplet_d1`` / ``triplet_d2`` as the paper does
    margin: float = 0.15
    template: str = "arcface"
    crop_size: int = 112


@dataclass
class IPNetConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    triplet: TripletConfig = field(default_factory=TripletConfig)
    data: DataConfig = field(
        default_factory=lambda: DataConfig(dropout_text=0.0, dropout_image=0.0, dropout_both=0.0)
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/ipnet"))
    validation: ValidationConfig = field(default_factory=lambda: ValidationConfig(steps=1))

    def check_inputs(self) -> None:
        """The run's inputs are given (checked when training starts, not by ``--dry-run``)."""
        check(bool(self.teacher.path), "teacher.path: the IDE-Net teacher is required (--teacher)")
        check(bool(self.data.path), "data.path: the pair dataset folder is required")


class IPNetTrainer(EditTrainer):
    """One stage of IPNet distillation on the shared training layer."""

    log_keys = (
        "loss_g",
        "l_adv",
        "l_distill",
        "l_triplet",
        "loss_d",
        "d_real",
        "d_fake",
        "inversion_fraction",
        "triplet_d1",
        "triplet_d2",
        "face_fraction",
        "lr",
        "val_id_distance",
        "val_same_person",
    )

    pipeline_config = {
        "recommended_steps": 1,
        "default_guidance_scale": 1.0,
        "default_image_guidance_scale": 1.0,
    }

    def __init__(self, config: IPNetConfig):
        super().__init__(config, config.training, config.optim)
        self.cfg = config
        self.pipeline_config = {**self.pipeline_config, "student_timestep": config.student.timestep}

    # ---- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        from ..models.discriminator import CropDiscriminator

        cfg, acc = self.cfg, self.accelerator
        student, student_params = self.build_models()
        d = cfg.discriminator
        with tiny_hint("discriminator.backbone"):
            disc = CropDiscriminator.from_backbone(
                d.backbone,
                **(
                    {}
                    if d.backbone == "tiny"
                    else {"crop_size": d.crop_size, "head_channels": d.head_channels}
                ),
                **({"layers": d.layers} if d.layers else {}),
            ).to(acc.device)
        self.dino = None
        if cfg.stage.lambda_triplet > 0:
            from ..models.discriminator import load_dino

            with tiny_hint("triplet.dino"):
                dino = load_dino(cfg.triplet.dino)
            self.dino = dino.requires_grad_(False).eval().to(acc.device)
        self.build_dataset(cfg.data, need_faces=cfg.stage.lambda_triplet > 0)
        if cfg.stage.lambda_triplet > 0:
            from .loop import FaceCoverage

            self.coverage = FaceCoverage("triplet")
        opt_g, sched_g = self.make_optimizer(student_params)
        opt_d = torch.optim.AdamW(
            disc.heads.parameters(), lr=d.lr, betas=(0.0, 0.99), weight_decay=0.0
        )
        from diffusers.optimization import get_scheduler

        sched_d = get_scheduler("constant", opt_d)
        # two calls: accelerate's FSDP2 prepares one model per call
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(student, opt_g, sched_g)
        with whole_unit(acc):  # the discriminator has no transformer blocks to wrap
            self.disc, self.opt_d, self.sched_d = acc.prepare(disc, opt_d, sched_d)
        if acc.distributed_type == DistributedType.FSDP:  # its frozen DINO is the pretrained one
            checkpoint_only(acc.unwrap_model(self.disc), lambda name: name.startswith("heads."))

    def build_models(self) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
        """The frozen teacher and the student; returns the module to prepare and the student's
        trained parameters (each backbone builds its own; the rest of set-up is shared)."""
        from ..pipelines import InstantPortraitPipeline

        cfg, acc = self.cfg, self.accelerator
        teacher_unet = self.load_components(cfg.teacher.path, cfg.teacher.seed, "teacher.path")
        teacher_unet.requires_grad_(False).eval().to(acc.device)
        self.teacher = InstantPortraitPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=teacher_unet,
            scheduler=self.scheduler,
        )
        if cfg.student.init:
            student = InstantPortraitPipeline.from_pretrained(cfg.student.init).unet
            self.history = _read_history(Path(cfg.student.init))
        else:
            student = copy.deepcopy(teacher_unet)
            self.history = []
        student.requires_grad_(True).train()
        if cfg.training.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        return student, list(student.parameters())

    def trainable(self) -> dict[str, torch.nn.Module]:
        unwrap = self.accelerator.unwrap_model
        return {"model": unwrap(self.model), "discriminator": unwrap(self.disc).heads}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer, "discriminator": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {"model": self.lr_scheduler, "discriminator": self.sched_d}

    # ---- pieces of the objective --------------------------------------------------------
    def student_latent(self, noise, image_latents, text) -> torch.Tensor:
        """z_hat_phi: the student's one-step clean latent from noise at its timestep."""
        t = torch.full(
            (noise.shape[0],), self.cfg.student.timestep, device=self.device, dtype=torch.long
        )
        out = unet_on_channels(self.model, noise, t, text, image_latents)
        return predict_x0(
            out.float(),
            noise.float(),
            alpha_bar(self.alphas_cumprod, t, noise),
            self.prediction_type,
        )

    def teacher_output(self, z_t, t, image_latents, cond, uncond) -> torch.Tensor:
        """The frozen teacher's guided UNet output at (z_t, t) (InstructPix2Pix guidance)."""
        return self.teacher.guided_prediction(
            z_t.to(self.teacher.unet.dtype),
            t,
            image_latents,
            cond,
            uncond,
            self.cfg.teacher.guidance_scale,
            self.cfg.teacher.image_guidance_scale,
        ).float()

    @torch.no_grad()
    def distillation_target(self, z_hat, image_latents, cond, uncond, generator) -> dict[str, Any]:
        """x_hat_theta(stopgrad(z_t')) with z_t' from eqs. 8-9; returns the latent and the t's."""
        st = self.cfg.stage
        z = z_hat.detach()
        bsz = z.shape[0]
        t = torch.randint(st.t_min, st.t_max + 1, (bsz,), generator=generator).to(self.device)
        ab = alpha_bar(self.alphas_cumprod, t, z)
        eps_rand = torch.randn(z.shape, generator=generator).to(z)
        inv = (t <= st.tau).nonzero().flatten()
        z_t = add_noise(z, eps_rand, ab)
        if len(inv):
            teach = lambda zz, tt: self.teacher_output(  # noqa: E731
                zz, tt, image_latents[inv], cond[inv], uncond[inv]
            )
            if st.inversion == "one_step":
                eps_inv = torch.zeros_like(z)
                eps_inv[inv] = predict_epsilon(
                    teach(z[inv], t[inv]), z[inv], ab[inv], self.prediction_type
                )
                z_t = add_noise(z, renoise_epsilon(eps_rand, eps_inv, t, st.tau), ab)
            else:
                z_t[inv] = ddim_inversion(
                    teach,
                    z[inv],
                    t[inv],
                    self.alphas_cumprod,
                    self.prediction_type,
                    st.inversion_steps,
                )
        out = self.teacher_output(z_t, t, image_latents, cond, uncond)
        target = predict_x0(out, z_t, ab, self.prediction_type)
        return {"latent": target, "t": t, "inversion_fraction": len(inv) / bsz}

    def face_features(self, images, landmarks, points: Any = "dlib") -> torch.Tensor:
        """F of eq. 11: DINOv2 embeddings of the face crops, L2-normalised.

        ``points``: ``"dlib"``, ``"keypoints"`` or a per-row bool tensor (the batch's
        ``is_keypoints``), as :func:`~instantportrait.faces.align.crop_faces` takes it.

        DINOv2's raw features have no fixed scale, so a fixed margin would mean nothing;
        normalised, ``d = ||F(a) - F(b)||`` lies in [0, 2] (``d^2 = 2 - 2 cos``).
        """
        from ..faces.align import crop_faces

        crops = crop_faces(
            (images / 2 + 0.5).clamp(0, 1),
            landmarks,
            self.cfg.triplet.template,
            self.cfg.triplet.crop_size,
            points=points,
        )
        return torch.nn.functional.normalize(self.dino(crops).float(), dim=-1)

    @torch.no_grad()
    def edit_condition(self, batch: dict[str, Any], x_in: torch.Tensor) -> tuple[Any, Any, Any]:
        """The input image's latents (zero where dropped), the instruction and the unconditional
        text (what the student and the teacher condition on)."""
        keep = (~batch["drop_image"]).to(self.device).view(-1, 1, 1, 1)
        image_latents = self.vae.encode(x_in).latent_dist.mode() * keep
        cond = self.encode_text(batch["instruction"])
        return image_latents, cond, self.encode_text([""]).expand_as(cond)

    def compute_losses(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """The student's terms of eq. 13 (with graph) and what the discriminator step needs."""
        from diffusers.utils.torch_utils import randn_tensor

        st, device = self.cfg.stage, self.device
        x_in, x_tg = batch["input"].to(device), batch["target"].to(device)
        image_latents, cond, uncond = self.edit_condition(batch, x_in)
        noise = randn_tensor(
            image_latents.shape, generator=generator, device=device, dtype=image_latents.dtype
        )
        z_hat = self.student_latent(noise, image_latents, cond)
        x_hat = self.decode(z_hat)
        out: dict[str, Any] = {"x_hat": x_hat, "x_target": x_tg}
        # The student's step goes through the unwrapped discriminator with its heads frozen:
        # under DDP the wrapped one would wait for head gradients this backward never makes.
        disc = self.accelerator.unwrap_model(self.disc)
        with frozen(disc.heads, disc):
            out["l_adv"] = hinge_generator_loss(disc(x_hat, generator=generator))
        if st.lambda_distill > 0:
            target = self.distillation_target(z_hat, image_latents, cond, uncond, generator)
            if st.space == "pixel":
                out["l_distill"] = distillation_loss(x_hat, self.decode(target["latent"]))
            else:
                out["l_distill"] = distillation_loss(z_hat, target["latent"])
            out["inversion_fraction"] = target["inversion_fraction"]
        else:
            out["l_distill"] = torch.zeros((), device=device)
        valid = batch["has_face"].to(device)
        out["face_fraction"] = valid.float().mean()
        if st.lambda_triplet > 0 and self.coverage is not None:
            self.coverage.update(int(valid.sum()), len(valid))
        if st.lambda_triplet > 0 and bool(valid.any()):
            # only the rows with a face are cropped and embedded (mixed batches are the rule)
            rows = valid.nonzero().flatten()
            lm = batch["landmarks"].to(device)[rows]
            kps = batch.get("is_keypoints")
            pts = "dlib" if kps is None else kps.to(device)[rows]
            with torch.no_grad():
                f_in = self.face_features(x_in[rows], lm, pts)
                f_tg = self.face_features(x_tg[rows], lm, pts)
            f_out = self.face_features(x_hat[rows], lm, pts)
            out["l_triplet"] = face_style_triplet_loss(f_in, f_out, f_tg, self.cfg.triplet.margin)
            d1, d2 = face_style_distances(f_in, f_out, f_tg)
            out["triplet_d1"], out["triplet_d2"] = d1.mean().detach(), d2.mean().detach()
        else:
            out["l_triplet"] = torch.zeros((), device=device)
        out["loss_g"] = (
            st.lambda_adv * out["l_adv"]
            + st.lambda_distill * out["l_distill"]
            + st.lambda_triplet * out["l_triplet"]
        )
        return out

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        acc = self.accelerator
        with acc.accumulate(self.model, self.disc):
            out = self.compute_losses(batch, generator)
            self.clip_and_step(out["loss_g"], self.model, self.optimizer, self.lr_scheduler)
            real = self.disc(out["x_target"], generator=generator)
            fake = self.disc(out["x_hat"].detach(), generator=generator)
            loss_d = hinge_discriminator_loss(real, fake)
            self.clip_and_step(loss_d, self.disc, self.opt_d, self.sched_d)
        logs = {
            k: float(out[k].detach())
            for k in ("loss_g", "l_adv", "l_distill", "l_triplet", "triplet_d1", "triplet_d2")
            if k in out
        }
        logs["face_fraction"] = float(out["face_fraction"])
        logs.update(
            loss_d=float(loss_d.detach()),
            d_real=float(real.detach().mean()),
            d_fake=float(fake.detach().mean()),
            inversion_fraction=float(out.get("inversion_fraction", 0.0)),
        )
        return logs

    # ---- export -----------------------------------------------------------------------
    def export_metadata(self, folder: Path, pipe) -> None:
        """``instantportrait.json``: the student's parameter count and its stage history."""
        from ..components import count_parameters
        from ..writer import atomic_write

        st = self.cfg.stage
        record = {
            "stage": st.name,
            "t_range": [st.t_min, st.t_max],
            "lambda_adv": st.lambda_adv,
            "lambda_distill": st.lambda_distill,
            "lambda_triplet": st.lambda_triplet,
            "tau": st.tau,
            "inversion": st.inversion,
            "space": st.space,
            "steps": self.run.max_steps,
            "global_batch": self.run.batch_size
            * self.run.gradient_accumulation_steps
            * self.accelerator.num_processes,
        }
        meta = {
            "kind": "ipnet",
            "unet_parameters": count_parameters(pipe.unet),
            "student_timestep": self.cfg.student.timestep,
            "teacher": self.cfg.teacher.path,
            "stages": [*self.history, record],
        }
        text = json.dumps(meta, indent=2)
        atomic_write(folder / "instantportrait.json", lambda p: p.write_text(text))


def _read_history(folder: Path) -> list[dict[str, Any]]:
    meta = folder / "instantportrait.json"
    if meta.is_file():
        return list(json.loads(meta.read_text()).get("stages", []))
    return []
