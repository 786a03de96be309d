"""IDE-Net training (InstantPortrait stage 1): InstructPix2Pix fine-tuned with the annealing
identity loss, ``L = L_dm + lambda_aid * W_a(t, T_max) * L_cid`` (eqs. 2-5, App. G.1).

The UNet sees ``noisy target latent || encoded input image``; x_hat_0 is predicted from its
output, decoded by the frozen VAE and cropped at the face found on the input; a frozen
identity embedder compares grayscale crops of the input and of x_hat_0. Gradients of the
identity term reach the UNet through the decoder, never the embedder or the VAE.

Decoding the whole image for the identity term costs a full VAE decode with activations kept
for backward. ``loss.face_window`` decodes only the latent window around the face (the
landmarks' extent grown by ``window_margin`` on each side): memory and time of that decode
scale with the window's area instead of the image's, at the price of a slightly different
decode at the window's border (the decoder's receptive field is cut there; the face crop sits
well inside when the margin is >= 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..backbones.ip2p_unet import unet_on_channels
from ..losses.diffusion import diffusion_loss, diffusion_target
from ..losses.identity import (
    annealed_identity_loss,
    annealing_weight,
    idenet_loss,
    identity_distance,
)
from ..parameterization import add_noise, alpha_bar, predict_x0
from .config import check
from .editing import DataConfig, EditTrainer, ValidationConfig
from .loop import FaceCoverage
from .run_settings import OptimConfig, RunConfig


@dataclass
class ModelConfig:
    """Where the starting InstructPix2Pix checkpoint comes from."""

    #: pipeline folder or Hub id; ``tiny`` builds tiny random components (tests, dry runs),
    #: ``random-real`` the real InstructPix2Pix architecture with random weights (benchmarks)
    pretrained: str = "timbrooks/instruct-pix2pix"
    seed: int = 0
    #: ``kontext``: FLUX.1 Kontext (``pretrained`` a FluxKontextPipeline folder);
    #: ``qwen-edit``: Qwen-Image-Edit (a QwenImageEditPipeline folder, or 2509/2511's
    #: QwenImageEditPlusPipeline); both trained as the LoRA ``ide`` (see
    #: :mod:`instantportrait.training.dit_idenet`)
    backbone: Literal["instructpix2pix", "kontext", "qwen-edit"] = "instructpix2pix"
    #: the DiTs only: the LoRA rank; the teacher's guidance (Kontext: the distilled input,
    #: default 2.5; Qwen-Image-Edit: true CFG's scale for validation and the export, default
    #: 4.0); T5's token count (Kontext)
    lora_rank: int = 64
    guidance: float | None = None
    max_sequence_length: int = 512


@dataclass
class IdentityLossConfig:
    """The annealing identity loss; Table 5's variants through ``weighting``."""

    lambda_aid: float = 0.7
    weighting: Literal["linear", "linear_offset", "cosine", "cosine_increasing", "constant"] = (
        "linear"
    )
    a: float = 1.0
    b: float = 0.0
    alpha: float = 1.0
    t_max: int = 999
    embedder: str = "dlib"
    embedder_weights: str | None = None
    grayscale: bool = True
    face_window: bool = False
    window_margin: float = 0.75

    def __post_init__(self) -> None:
        check(self.lambda_aid >= 0, "loss.lambda_aid: must be >= 0")
        check(self.t_max > 0, "loss.t_max: must be positive")
        check(self.window_margin >= 0, "loss.window_margin: must be >= 0")


@dataclass
class IDENetConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: IdentityLossConfig = field(default_factory=IdentityLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/idenet"))
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def check_inputs(self) -> None:
        """The run's inputs are given (checked when training starts, not by ``--dry-run``)."""
        check(bool(self.data.path), "data.path: the pair dataset folder is required")


def latent_face_windows(
    landmarks: torch.Tensor, latent_hw: tuple[int, int], factor: int, margin: float
) -> tuple[torch.Tensor, int, int]:
    """Per-sample top-left corners (latent cells) of one window size covering each face.

    The window is the landmarks' extent grown by ``margin`` of its size on every side, the
    largest over the batch, clamped to the latent; returns (corners (B, 2) as (x, y), w, h).
    """
    lo = landmarks.amin(dim=1)
    hi = landmarks.amax(dim=1)
    extent = (hi - lo).amax(dim=1).clamp(min=8.0)  # square, in pixels
    side = (extent * (1 + 2 * margin) / factor).ceil().long().amax().item()
    h, w = latent_hw
    win_w, win_h = min(int(side), w), min(int(side), h)
    centre = (lo + hi) / 2 / factor
    x0 = (centre[:, 0] - win_w / 2).round().long().clamp(0, w - win_w)
    y0 = (centre[:, 1] - win_h / 2).round().long().clamp(0, h - win_h)
    return torch.stack([x0, y0], dim=1), win_w, win_h


class IDENetTrainer(EditTrainer):
    """Stage 1 of InstantPortrait on the shared training layer."""

    log_keys = (
        "loss",
        "l_dm",
        "l_cid",
        "w_a",
        "l_aid",
        "face_fraction",
        "lr",
        "val_id_distance",
        "val_same_person",
    )

    def __init__(self, config: IDENetConfig):
        super().__init__(config, config.training, config.optim)
        self.cfg = config

    # ---- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        unet = self.load_components(cfg.model.pretrained, cfg.model.seed)
        unet.train()
        if cfg.training.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.embedder = self.build_embedder() if cfg.loss.lambda_aid > 0 else None
        if self.embedder is not None:
            self.embedder.requires_grad_(False).eval()
        self.build_dataset(cfg.data, need_faces=cfg.loss.lambda_aid > 0)
        if cfg.loss.lambda_aid > 0:
            self.coverage = FaceCoverage("identity")
        optimizer, lr_scheduler = self.make_optimizer(unet.parameters())
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            unet, optimizer, lr_scheduler
        )

    def build_embedder(self):
        """The frozen identity embedder E of L_cid (any of the face stack's)."""
        from ..faces.embedders import get_embedder

        loss = self.cfg.loss
        return get_embedder(loss.embedder, weights=loss.embedder_weights, device=self.device)

    # ---- the objective ------------------------------------------------------------------
    def identity_term(
        self,
        x_in: torch.Tensor,
        z0_hat: torch.Tensor,
        landmarks: torch.Tensor,
        t: torch.Tensor,
        is_keypoints: torch.Tensor | None = None,
        t_max: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """W_a-weighted L_cid (eqs. 3-4) for rows that all show a face; logs its parts.

        The caller passes only the rows with a face: a row without landmarks has no crop.
        ``is_keypoints`` ``(B,)``: rows whose points are the detector's five keypoints, cropped
        with the template's keypoint targets (``None``: all dlib's 5).
        ``t`` is each row's noise level on the scale ``t_max`` (default ``loss.t_max``; the
        flow backbones pass sigma with ``t_max = 1``).
        """
        from ..faces.align import crop_faces, to_grayscale

        cfg, emb = self.cfg.loss, self.embedder
        images_in = (x_in / 2 + 0.5).clamp(0, 1)
        lm = landmarks.to(self.device, torch.float32)
        if cfg.face_window:
            # pixels per latent: the DiT backbones know theirs (Qwen's VAE has no block list)
            factor = getattr(getattr(self, "backbone", None), "vae_scale_factor", None)
            factor = factor or 2 ** (len(self.vae.config.block_out_channels) - 1)
            corners, ww, wh = latent_face_windows(
                lm, tuple(z0_hat.shape[-2:]), factor, cfg.window_margin
            )
            windows = torch.stack(
                [z0_hat[i, :, y : y + wh, x : x + ww] for i, (x, y) in enumerate(corners.tolist())]
            )
            images_hat = self.decode(windows) / 2 + 0.5
            lm_hat = lm - corners.to(lm).unsqueeze(1) * factor
        else:
            images_hat, lm_hat = self.decode(z0_hat) / 2 + 0.5, lm
        g = to_grayscale if cfg.grayscale else (lambda x: x)
        pts = "dlib" if is_keypoints is None else is_keypoints
        with torch.no_grad():
            ref = emb.embed(g(crop_faces(images_in, lm, emb.template, emb.input_size, points=pts)))
        hat = emb.embed(g(crop_faces(images_hat, lm_hat, emb.template, emb.input_size, points=pts)))
        l_cid = identity_distance(ref, hat)
        t_max = cfg.t_max if t_max is None else t_max
        w_a = annealing_weight(t, t_max, cfg.weighting, cfg.a, cfg.b, cfg.alpha)
        return {"l_aid": annealed_identity_loss(l_cid, w_a), "l_cid": l_cid, "w_a": w_a}

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Every term of eq. 5 for one batch (the trainer's step and the tests call this)."""
        from diffusers.utils.torch_utils import randn_tensor

        device = self.device
        x_in = batch["input"].to(device)
        x_tg = batch["target"].to(device)
        keep_image = (~batch["drop_image"]).to(device)
        with torch.no_grad():
            sf = self.vae.config.scaling_factor
            z0 = self.vae.encode(x_tg).latent_dist.sample(generator=generator) * sf
            image_latents = self.vae.encode(x_in).latent_dist.mode()
            image_latents = image_latents * keep_image.view(-1, 1, 1, 1).to(image_latents)
            text = self.encode_text(batch["instruction"])
        bsz = z0.shape[0]
        noise = randn_tensor(z0.shape, generator=generator, device=device, dtype=z0.dtype)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (bsz,), generator=generator
        ).to(device)
        ab = alpha_bar(self.alphas_cumprod, t, z0)
        z_t = add_noise(z0, noise, ab)
        pred = unet_on_channels(self.model, z_t, t, text, image_latents)
        ptype = self.train_scheduler.config.prediction_type
        l_dm = diffusion_loss(pred, diffusion_target(noise, z0, ab, ptype)).mean()
        rows_x0 = lambda rows: predict_x0(  # noqa: E731
            pred[rows].float(), z_t[rows].float(), ab[rows].float(), ptype
        )
        return self.add_identity_terms({"l_dm": l_dm}, batch, x_in, keep_image, rows_x0, t)

    def add_identity_terms(
        self,
        out: dict[str, torch.Tensor],
        batch: dict[str, Any],
        x_in: torch.Tensor,
        keep_image: torch.Tensor,
        x0_hat_of: Any,
        level: torch.Tensor,
        t_max: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Eq. 5 from ``out["l_dm"]``: the identity term on the rows that show a face (and keep
        their input image), x0_hat from ``x0_hat_of(rows)`` at noise ``level`` (scale ``t_max``);
        every backbone shares this (only how x0_hat is predicted differs)."""
        device = self.device
        bsz = x_in.shape[0]
        valid = batch["has_face"].to(device) & keep_image
        lam = self.cfg.loss.lambda_aid
        if lam > 0 and self.coverage is not None:
            self.coverage.update(int(batch["has_face"].sum()), bsz)
        if lam > 0 and bool(valid.any()):
            # only the rows with a face are cropped and embedded (mixed batches are the rule)
            rows = valid.nonzero().flatten()
            kps = batch.get("is_keypoints")
            kps = None if kps is None else kps[rows.cpu()]
            terms = self.identity_term(
                x_in[rows],
                x0_hat_of(rows),
                batch["landmarks"][rows.cpu()],
                level[rows],
                is_keypoints=kps,
                t_max=t_max,
            )
            out["l_aid"] = terms["l_aid"]
            out["l_cid"] = terms["l_cid"].mean()
            out["w_a"] = terms["w_a"].float().mean()
        else:
            out["l_aid"] = torch.zeros((), device=device)
        out["face_fraction"] = valid.float().mean()
        out["loss"] = idenet_loss(out["l_dm"], out["l_aid"], lam)
        return out

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        with self.accelerator.accumulate(self.model):
            terms = self.compute_loss(batch, generator)
            self.clip_and_step(terms["loss"], self.model, self.optimizer, self.lr_scheduler)
        return {k: float(v.detach()) for k, v in terms.items()}
