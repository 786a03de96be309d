"""FPGA's ID-ControlNet training (MMF, spec §2, §7) on the shared training layer.

Per batch: the image x, caption C, condition image I (landmarks / skeleton / both, drawn by
:mod:`instantportrait.conditions` in the stage's mode mix), the face crop and its box. The
frozen ArcFace-like embedder and CLIP vision tower encode the face crop; the trainable
resampler makes F_id; the trainable ID-ControlNet turns (z_t, t, C, F_id, I) into residuals
for the frozen SD1.5 UNet, and ``L_cldm = ‖ε − ε̂‖²`` (eq. 3). 10% of captions are the null
text. On every ``cft.every``-th optimisation step (Clone Face Tuning, §2.4) the batch is
clone-spliced (:func:`~instantportrait.losses.clone_face.clone_face_splice`), the ID-attention
maps of layers at least ``cft.min_layer_fraction`` of the latent's side are captured, and
``L = L_cldm + λ·L_cfa`` (eqs. 2, 4).

Stages (``--stage``): ``landmark`` (50k steps), ``skeleton`` (100k), ``both`` (1M, CFT), or
``all`` in that order, each continuing from the previous stage's exported pipeline. The
step that decides CFT is the optimizer's own step count (restored with its state on
resume), so a resumed run makes the same CFT choices as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..conditions import STAGE_MODES, draw_mode, render_condition, scale_keypoints
from ..data.dataset import example_rng, pil_to_tensor
from ..errors import InputError, ModelNotFoundError
from ..io import load_image
from ..losses.clone_face import (
    cft_due,
    clone_face_attention_loss,
    clone_face_splice,
    fpga_loss,
)
from ..losses.diffusion import diffusion_loss, diffusion_target
from ..multi_id_attention import IDAttentionCapture
from ..parameterization import add_noise, alpha_bar
from .config import check
from .loop import Trainer
from .run_settings import OptimConfig, RunConfig

Stage = Literal["landmark", "skeleton", "both"]
STAGE_ORDER: tuple[str, ...] = ("landmark", "skeleton", "both")


@dataclass
class FPGAModelConfig:
    """Where the parts come from.

    ``pretrained``: an SD1.5 folder or Hub id (its ``unet``/``vae``/``text_encoder``/
    ``tokenizer`` subfolders), an exported FPGA pipeline folder (training continues from its
    ControlNet and resampler), ``tiny`` (tests) or ``random-real`` (SD1.5 architecture with
    random weights, benchmarks).
    """

    pretrained: str = "SG161222/Realistic_Vision_V4.0_noVAE"
    #: a CLIP vision tower folder/Hub id (ViT-H/14, IP-Adapter's ``models/image_encoder``)
    image_encoder: str = "h94/IP-Adapter"
    image_encoder_subfolder: str = "models/image_encoder"
    face_embedder: str = "arcface"
    face_embedder_weights: str | None = None
    seed: int = 0


@dataclass
class FPGADataConfig:
    path: str = ""
    resolution: int = 512
    dropout_text: float = 0.1

    def __post_init__(self) -> None:
        check(
            self.resolution >= 8 and self.resolution % 8 == 0,
            f"data.resolution: a multiple of 8, got {self.resolution}",
        )
        check(0 <= self.dropout_text <= 1, "data.dropout_text: a probability in [0, 1]")


@dataclass
class CFTConfig:
    """Clone Face Tuning (spec §2.4)."""

    every: int = 10
    lambda_cfa: float = 0.2
    #: the stages in which CFT runs (the paper: stage 3)
    stages: list[str] = field(default_factory=lambda: ["both"])
    source: Literal["id_probs", "id_branch_output"] = "id_probs"
    #: ID layers whose side is at least this fraction of the latent's (32/64 at 512²)
    min_layer_fraction: float = 0.5
    #: crops are resized to max(min_crop, box side in latent cells)
    min_crop: int = 32

    def __post_init__(self) -> None:
        check(self.every >= 0, "cft.every: must be >= 0 (0 disables)")
        check(self.lambda_cfa >= 0, "cft.lambda_cfa: must be >= 0")
        bad = [s for s in self.stages if s not in STAGE_ORDER]
        check(not bad, f"cft.stages: unknown {bad}; of {', '.join(STAGE_ORDER)}")


@dataclass
class FPGAValidationConfig:
    count: int = 4
    steps: int = 30
    guidance_scale: float = 5.0
    seed: int = 0


def check_stage_steps(stage_steps: dict) -> dict[str, int]:
    """``stage_steps`` names every stage of :data:`STAGE_ORDER` once, each a positive integer;
    returns it with integer values. One line naming the key otherwise."""
    stages = ", ".join(STAGE_ORDER)
    unknown = sorted(set(stage_steps) - set(STAGE_ORDER))
    if unknown:
        raise InputError(f"stage_steps: unknown stage {unknown[0]!r} (of {stages})")
    missing = [s for s in STAGE_ORDER if s not in stage_steps]
    if missing:
        raise InputError(
            f"stage_steps: no steps for {', '.join(missing)}; give all of {stages}, or set "
            f"one stage alone with --set stage_steps.{missing[0]}=N"
        )
    out = {}
    for stage in STAGE_ORDER:
        n = stage_steps[stage]
        ok = isinstance(n, (int, float)) and not isinstance(n, bool) and float(n).is_integer()
        check(ok and n >= 1, f"stage_steps.{stage}: a positive integer, got {n!r}")
        out[stage] = int(n)
    return out


@dataclass
class FPGAConfig:
    stage: Stage = "both"
    #: optimisation steps of each stage (spec §2.3); sets training.max_steps unless given
    stage_steps: dict = field(
        default_factory=lambda: {"landmark": 50_000, "skeleton": 100_000, "both": 1_000_000}
    )
    model: FPGAModelConfig = field(default_factory=FPGAModelConfig)
    data: FPGADataConfig = field(default_factory=FPGADataConfig)
    cft: CFTConfig = field(default_factory=CFTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/fpga"))
    validation: FPGAValidationConfig = field(default_factory=FPGAValidationConfig)

    def __post_init__(self) -> None:
        self.stage_steps = check_stage_steps(self.stage_steps)

    def check_inputs(self) -> None:
        """The run's inputs are given (checked when training starts, not by ``--dry-run``)."""
        check(bool(self.data.path), "data.path: the portrait dataset folder is required")


# ---------------------------------------------------------------------- data
class PortraitTrainDataset(torch.utils.data.Dataset):
    """Portrait rows as tensors for one stage; every random choice seeded by (seed, epoch, index).

    Each image is resized (short side) and centre-cropped to a square ``resolution``; the
    landmarks, keypoints and face box follow. Items: ``image`` [-1, 1], ``condition`` [0, 1],
    ``face`` (aligned crop, [0, 1]), ``face_box`` (pixels), ``caption`` (empty when
    dropped), ``mode``.
    """

    def __init__(self, source, resolution: int, stage: str, seed: int, dropout_text: float):
        if stage not in STAGE_MODES:
            raise InputError(f"stage: one of {', '.join(STAGE_MODES)}, got {stage!r}")
        self.source, self.resolution, self.stage = source, resolution, stage
        self.seed, self.dropout_text = seed, dropout_text

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        ex = self.source[index]
        rng = example_rng(self.seed, epoch, index)
        mode = draw_mode(self.stage, float(rng.random()))
        drop_text = float(rng.random()) < self.dropout_text
        img = load_image(ex.image_bytes, name=f"row {ex.key} image")
        r = self.resolution
        s = r / min(img.size)
        w, h = max(r, round(img.width * s)), max(r, round(img.height * s))
        left, top = (w - r) // 2, (h - r) // 2
        img = img.resize((w, h), Image.BICUBIC).crop((left, top, left + r, top + r))
        sx, sy = w / ex_size(ex)[0], h / ex_size(ex)[1]
        lm = ex.landmarks * np.array([sx, sy]) - np.array([left, top])
        kps = None
        if ex.keypoints is not None:
            kps = scale_keypoints(ex.keypoints, sx, sy)
            kps[..., 0] -= left
            kps[..., 1] -= top
        x0, y0, x1, y1 = ex.face_box
        box = [x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top]
        cond = render_condition((r, r), landmarks=lm, keypoints=kps, mode=mode)
        face = load_image(ex.face_bytes, name=f"row {ex.key} face")
        return {
            "image": pil_to_tensor(img),
            "condition": torch.from_numpy(np.asarray(cond, dtype=np.float32) / 255).permute(
                2, 0, 1
            ),
            "face": torch.from_numpy(np.asarray(face, dtype=np.float32) / 255).permute(2, 0, 1),
            "face_box": torch.tensor(box, dtype=torch.float32),
            "caption": "" if drop_text else ex.caption,
            "mode": mode,
        }


def ex_size(ex) -> tuple[int, int]:
    """(width, height) of a row's image, read from its header only."""
    import io

    with Image.open(io.BytesIO(ex.image_bytes)) as im:
        return im.size


def collate_portraits(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


# ---------------------------------------------------------------------- model
class FPGATrainable(nn.Module):
    """The trained parts together (one module for the loop, EMA and checkpoints)."""

    def __init__(self, controlnet: nn.Module, resampler: nn.Module):
        super().__init__()
        self.controlnet, self.resampler = controlnet, resampler

    def forward(self, ident, tokens, z_t, t, text, cond, id_capture=None):
        """F_id from the frozen encoders' outputs, then the ControlNet's residuals."""
        f_id = self.resampler(ident, tokens)
        return self.controlnet(
            z_t, t, text, cond, id_embeds=f_id, id_capture=id_capture, return_dict=False
        )


def load_fpga_parts(m: FPGAModelConfig) -> dict[str, Any]:
    """Every component the trainer needs (see :class:`FPGAModelConfig`)."""
    from ..pipelines.fpga import fpga_components

    if m.pretrained in ("tiny", "random-real"):
        return fpga_components("tiny" if m.pretrained == "tiny" else "sd15", seed=m.seed)
    path = Path(m.pretrained)
    if (path / "model_index.json").is_file() and (path / "controlnet").is_dir():
        from ..model_check import check_model
        from ..pipelines.fpga import FPGAPipeline

        check_model(path, "fpga", "model.pretrained")
        pipe = FPGAPipeline.from_pretrained(str(path))
        parts = dict(pipe.components)
        parts["face_embedder"] = pipe.config.face_embedder
        return parts
    from ..models.id_controlnet import IDControlNetModel
    from ..models.resampler import IDResampler
    from ..pipelines.sd_parts import load_sd_parts
    from .repcontrolnet import SD15_HOW

    parts = load_sd_parts(m.pretrained, "fpga-base", "model.pretrained", SD15_HOW)
    image_encoder = load_image_encoder(m.image_encoder, m.image_encoder_subfolder)
    return {
        **parts,
        "controlnet": IDControlNetModel.from_unet(parts["unet"]),
        "resampler": IDResampler(clip_embed_dim=image_encoder.config.hidden_size),
        "image_encoder": image_encoder,
        "face_embedder": m.face_embedder,
    }


def load_image_encoder(source: str, subfolder: str | None = None):
    """The CLIP vision encoder at ``source`` (folder or Hub id) / ``subfolder``, checked first."""
    from transformers import CLIPVisionModelWithProjection

    from ..model_check import check_model
    from ..model_sources import locate

    how = "give a CLIP vision folder, or a Hub id such as h94/IP-Adapter with its subfolder"
    where = locate(source, "model.image_encoder", how)
    if not isinstance(where, str):
        check_model(Path(where) / (subfolder or ""), "image-encoder", "model.image_encoder")
    try:
        return CLIPVisionModelWithProjection.from_pretrained(
            str(where), subfolder=subfolder or None
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"model.image_encoder {source}: cannot load ({first[:160]}); {how}"
        ) from None


class FPGATrainer(Trainer):
    """ID-ControlNet + resampler training, one stage at a time."""

    log_keys = ("loss", "l_cldm", "l_cfa", "cft", "lr")

    def __init__(self, config: FPGAConfig, face_embedder=None):
        """``face_embedder``: an ``IdentityEmbedder`` instance to use instead of the config's
        ``model.face_embedder`` name (e.g. a network built in code)."""
        super().__init__(config, config.training, config.optim)
        self.cfg = config
        self._embedder_override = face_embedder

    @classmethod
    def count_examples(cls, config: FPGAConfig) -> int:
        from ..data.portraits import open_portrait_source

        return len(open_portrait_source(config.data.path))

    def setup(self) -> None:
        from diffusers import DDPMScheduler

        from ..data.portraits import open_portrait_source
        from ..faces.embedders import get_embedder

        cfg = self.cfg
        parts = load_fpga_parts(cfg.model)
        self.parts = parts
        dev = self.device
        for name in ("vae", "text_encoder", "unet", "image_encoder"):
            parts[name].requires_grad_(False).eval().to(dev)
        self.vae, self.text_encoder, self.unet = parts["vae"], parts["text_encoder"], parts["unet"]
        self.tokenizer, self.image_encoder = parts["tokenizer"], parts["image_encoder"]
        self.face_embedder_name = parts.get("face_embedder") or cfg.model.face_embedder
        weights = cfg.model.face_embedder_weights
        self.face_embedder = (
            get_embedder(
                self._embedder_override or self.face_embedder_name, weights=weights, device=dev
            )
            .to(dev)
            .requires_grad_(False)
            .eval()
        )
        self.train_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
        self.alphas_cumprod = self.train_scheduler.alphas_cumprod.to(dev)
        source = open_portrait_source(cfg.data.path)
        template = source.meta.get("face_template")
        if template is not None and template != self.face_embedder.template:
            raise InputError(
                f"data.path: face crops use the {template!r} template, the face embedder "
                f"{self.face_embedder_name!r} expects {self.face_embedder.template!r}"
            )
        self.dataset = PortraitTrainDataset(
            source, cfg.data.resolution, cfg.stage, cfg.training.seed, cfg.data.dropout_text
        )
        self.collate = collate_portraits
        model = FPGATrainable(parts["controlnet"], parts["resampler"]).train()
        if cfg.training.gradient_checkpointing:
            model.controlnet.enable_gradient_checkpointing()
        optimizer, lr_scheduler = self.make_optimizer(model.parameters())
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            model, optimizer, lr_scheduler
        )

    # ---- the objective ------------------------------------------------------------------
    def optimizer_steps(self) -> int:
        """Optimisation steps taken so far (Adam's per-parameter step, restored on resume)."""
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state.get(p)
                if state and "step" in state:
                    return int(state["step"])
        return 0

    def cft_now(self) -> bool:
        c = self.cfg.cft
        return self.cfg.stage in c.stages and cft_due(self.optimizer_steps(), c.every)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        from ..text import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, texts, self.device)

    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator, cft: bool):
        """Every term of eq. 4 for one batch (``cft``: the clone-spliced iteration)."""
        from diffusers.utils.torch_utils import randn_tensor

        from ..models.resampler import encode_face_crops

        dev = self.device
        x, cond = batch["image"].to(dev), batch["condition"].to(dev)
        if cft:
            x, cond, b1, b2 = clone_face_splice(x, cond, batch["face_box"])
        with torch.no_grad():
            sf = self.vae.config.scaling_factor
            z0 = self.vae.encode(x).latent_dist.sample(generator=generator) * sf
            text = self.encode_text(batch["caption"])
            ident, tokens = encode_face_crops(
                batch["face"].to(dev), self.face_embedder, self.image_encoder
            )
        noise = randn_tensor(z0.shape, generator=generator, device=dev, dtype=z0.dtype)
        n_t = self.train_scheduler.config.num_train_timesteps
        t = torch.randint(0, n_t, (z0.shape[0],), generator=generator).to(dev)
        ab = alpha_bar(self.alphas_cumprod, t, z0)
        z_t = add_noise(z0, noise, ab)
        capture = None
        if cft:
            side = min(z0.shape[-2:])
            capture = IDAttentionCapture(
                aspect_hw=tuple(z0.shape[-2:]),
                source=self.cfg.cft.source,
                min_size=max(1, int(np.ceil(side * self.cfg.cft.min_layer_fraction))),
            )
        down, mid = self.model(ident, tokens, z_t, t, text, cond, id_capture=capture)
        pred = self.unet(
            z_t,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        ptype = self.train_scheduler.config.prediction_type
        l_cldm = diffusion_loss(pred.float(), diffusion_target(noise, z0, ab, ptype)).mean()
        l_cfa = None
        if cft:
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            l_cfa = clone_face_attention_loss(
                capture.maps, b1, b2, tuple(z0.shape[-2:]), factor, self.cfg.cft.min_crop
            )
        out = {"l_cldm": l_cldm, "loss": fpga_loss(l_cldm, l_cfa, self.cfg.cft.lambda_cfa)}
        out["l_cfa"] = l_cfa if l_cfa is not None else torch.zeros((), device=dev)
        out["cft"] = torch.tensor(float(cft))
        return out

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        cft = self.cft_now()
        with self.accelerator.accumulate(self.model):
            terms = self.compute_loss(batch, generator, cft)
            self.clip_and_step(terms["loss"], self.model, self.optimizer, self.lr_scheduler)
        return {k: float(v.detach()) for k, v in terms.items()}

    # ---- validation and export ----------------------------------------------------------
    def pipeline(self, use_ema: bool = False):
        import copy

        from ..pipelines.fpga import FPGAPipeline

        model = self.accelerator.unwrap_model(self.model)
        if use_ema and self.ema is not None:
            model = copy.deepcopy(model)
            self.ema.copy_to(model)
        p = self.parts
        pipe = FPGAPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            controlnet=model.controlnet,
            resampler=model.resampler,
            image_encoder=self.image_encoder,
            scheduler=p["scheduler"],
            face_embedder=self.face_embedder_name,
            face_embedder_weights=self.cfg.model.face_embedder_weights,
        )
        pipe.set_face_embedder(self.face_embedder)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(self, step: int) -> dict[str, float]:
        """A grid of (condition, generation, caption) for the first rows."""
        from ..writer import save_image
        from .validation import contact_grid

        if not self.accelerator.is_main_process:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        try:
            v, pipe, rows = self.cfg.validation, self.pipeline(), []
            for i in range(min(v.count, len(self.dataset))):
                item = self.dataset[(0, i)]
                cond = Image.fromarray(
                    (item["condition"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                )
                caption = self.dataset.source[i].caption
                f_id = pipe.encode_face_crops(item["face"][None].to(self.device))
                out = pipe(
                    caption,
                    cond,
                    id_embeds=f_id,
                    num_inference_steps=v.steps,
                    guidance_scale=v.guidance_scale,
                    generator=torch.Generator().manual_seed(v.seed),
                ).images[0]
                rows.append((cond, out, f"{item['mode']} | {caption}"))
            save_image(contact_grid(rows), self.run_dir / "validation" / f"step-{step:06d}.png")
        finally:
            model.train()
        return {}

    def export(self, folder: Path) -> None:
        pipe = self.pipeline(use_ema=True)
        pipe.controlnet.eval()
        pipe.save_pretrained(folder)
