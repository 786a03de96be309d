"""RepControlNet training (FPGA §5) on the shared accelerate layer.

The frozen SD1.5-architecture UNet gets a parallel trainable copy of every conv/linear layer
(Eq. 5, w = 0.1), the condition adapter at its first layer and decoupled ID attention; the
loss is the diffusion MSE ``||eps - eps_theta(z_t, t, C, F_id, I)||^2`` with 10% null text
(spec §5 [rec]: the ID-ControlNet's recipe, Adam 1e-4). The export is a
:class:`~..pipelines.rep_controlnet.RepControlNetPipeline` whose UNet is the **merged** model
(Eq. 6 with ``merge.alpha``/``merge.beta``), plus ``rep_branches.safetensors`` (the copies and
the adapter, to merge again with another beta).

Data: a folder with ``metadata.jsonl``, one JSON object a line, diffusers' ControlNet format:
``{"image": "img/0.png", "conditioning_image": "pose/0.png", "text": "a photo of ...",
"face": "faces/0.png"}`` (paths relative to the folder). The identity, optional, is either
``"face"``: a photo of the person, encoded to F_id on the fly by the frozen identity encoder
of ``model.identity_encoder`` (an FPGA pipeline folder; F_id cached per file), or
``"id_embeds"``: a safetensors file holding a precomputed ``id_embeds`` ``(tokens, dim)``.
Every row gives an identity, or none does (then no ID term is trained).

``data.path`` may instead be FPGA's portrait dataset (``data build-portraits``, the IDZoom
layout): its skeleton (``data.condition``, the paper's Table 6 setting) or landmark condition
is drawn as for the ID-ControlNet, and its aligned face crops go through the identity encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import InputError
from ..losses.diffusion import diffusion_loss, diffusion_target
from ..parameterization import add_noise, alpha_bar
from .config import check
from .loop import Trainer
from .run_settings import OptimConfig, RunConfig


@dataclass
class RepModelConfig:
    #: an SD1.5 diffusers folder (unet/vae/text_encoder/tokenizer/scheduler); ``tiny`` (tests)
    #: or ``random-real`` (SD1.5's architecture with random weights, benchmarks)
    pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    init_scale: float = 0.1
    inject_at: Literal["conv_in_output", "latent_input"] = "conv_in_output"
    adapter_channels: list[int] = field(default_factory=lambda: [16, 32, 96, 256])
    #: F_id width: by default the identity encoder's (``identity_encoder``), else the base
    #: UNet's cross-attention width (768 for SD1.5); 0 disables the ID attention
    id_dim: int | None = None
    #: the FPGA pipeline folder whose identity encoder (resampler + CLIP vision + face
    #: embedder) made the dataset's F_id; copied into the export so that the merged model
    #: takes face images (``generate --method fpga --id-image``). Empty: the export takes F_id.
    identity_encoder: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            self.id_dim is None or self.id_dim >= 0,
            "model.id_dim: a width, or 0 for no ID attention",
        )


@dataclass
class RepDataConfig:
    #: a ``metadata.jsonl`` folder, or an FPGA portrait dataset (``data build-portraits``)
    path: str = ""
    resolution: int = 512
    dropout_text: float = 0.1
    #: for a portrait dataset: the condition drawn from its keypoints and landmarks
    #: (``skeleton``: the paper's Table 6 setting; ``landmark``; ``both``: FPGA's stage-3 mix)
    condition: Literal["skeleton", "landmark", "both"] = "skeleton"

    def __post_init__(self) -> None:
        check(self.resolution % 8 == 0, "data.resolution: a multiple of 8")
        check(0 <= self.dropout_text <= 1, "data.dropout_text: a probability")


@dataclass
class MergeConfig:
    """Eq. 6's ratios; alpha = beta = 1 is exactly the trained model."""

    alpha: float = 1.0
    beta: float = 1.0


@dataclass
class RepControlNetConfig:
    model: RepModelConfig = field(default_factory=RepModelConfig)
    data: RepDataConfig = field(default_factory=RepDataConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, lr_scheduler="constant")
    )
    training: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/repcontrolnet"))

    def check_inputs(self) -> None:
        """The run's inputs are given (checked when training starts, not by ``--dry-run``)."""
        check(bool(self.data.path), "data.path: the conditioning dataset folder is required")


class ConditionDataset(torch.utils.data.Dataset):
    """Rows of ``metadata.jsonl``: image, condition image, text (dropped with p), F_id."""

    def __init__(self, folder: str, resolution: int, dropout_text: float, seed: int = 0):
        self.folder = Path(folder)
        meta = self.folder / "metadata.jsonl"
        if not meta.is_file():
            raise InputError(f"data.path: {self.folder} has no metadata.jsonl")
        self.rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
        if not self.rows:
            raise InputError(f"{meta}: no rows")
        for i, row in enumerate(self.rows):
            for key in ("image", "conditioning_image", "text"):
                if key not in row:
                    raise InputError(f"{meta}: row {i} has no {key!r}")
        with_id = [bool(r.get("id_embeds") or r.get("face")) for r in self.rows]
        if any(with_id) and not all(with_id):
            raise InputError(
                f"{meta}: row {with_id.index(False)} gives no identity (id_embeds or face) "
                "while others do; give one in every row or in none"
            )
        self.uses_faces = any(bool(r.get("face")) for r in self.rows)
        self.resolution, self.dropout_text, self.seed = resolution, dropout_text, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        from ..io import load_image

        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.rows[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        size = (self.resolution, self.resolution)
        img = load_image(self.folder / row["image"]).resize(size)
        cond = load_image(self.folder / row["conditioning_image"]).resize(size)
        pixels = torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)
        control = torch.from_numpy(np.asarray(cond, np.float32) / 255.0).permute(2, 0, 1)
        text = "" if rng.random() < self.dropout_text else row["text"]
        item = {"pixels": pixels, "condition": control, "text": text, "id_embeds": None}
        item["face"] = str(self.folder / row["face"]) if row.get("face") else None
        if row.get("id_embeds"):
            from safetensors.torch import load_file

            item["id_embeds"] = load_file(str(self.folder / row["id_embeds"]))["id_embeds"]
        return item


def collate_conditions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked; the identities per row (a precomputed F_id, or a face file, or None)."""
    return {
        "pixels": torch.stack([it["pixels"] for it in items]),
        "condition": torch.stack([it["condition"] for it in items]),
        "text": [it["text"] for it in items],
        "id_embeds": [it["id_embeds"] for it in items],
        "faces": [it["face"] for it in items],
    }


def collate_portrait_conditions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """FPGA portrait rows (``training.fpga.PortraitTrainDataset``) as this trainer's batch: the
    aligned face crops stand for the identity."""
    n = len(items)
    return {
        "pixels": torch.stack([it["image"] for it in items]),
        "condition": torch.stack([it["condition"] for it in items]),
        "text": [it["caption"] for it in items],
        "id_embeds": [None] * n,
        "faces": [None] * n,
        "face_crops": torch.stack([it["face"] for it in items]),
    }


def open_portraits(path: str):
    """FPGA's portrait dataset at ``data.path``; one line naming both accepted formats when
    the folder holds neither."""
    from ..data.portraits import open_portrait_source

    why = (
        f"data.path: {path} holds neither metadata.jsonl (the ControlNet format) nor an FPGA "
        "portrait dataset (portraits.jsonl or shard-*.tar: data build-portraits)"
    )
    try:
        source = open_portrait_source(path)
    except InputError:
        raise InputError(why) from None
    if len(source) == 0:
        raise InputError(why)
    return source


#: how to provide an SD1.5 base, in every "not found" line (FPGA and RepControlNet).
SD15_HOW = (
    "give a diffusers SD1.5 folder or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
    " or SG161222/Realistic_Vision_V4.0_noVAE (FPGA's Table 6 base; `hf download` on a "
    "connected machine fills the cache), or tiny / random-real"
)


def load_sd_components(pretrained: str, seed: int = 0) -> dict[str, Any]:
    """vae, text_encoder, tokenizer, unet, scheduler of an SD1.5-format model (4-ch UNet):
    a folder or Hub id, its layout checked first (:func:`~..pipelines.sd_parts.load_sd_parts`)."""
    from diffusers import DDIMScheduler

    from ..components import SD15_SCHEDULER_CONFIG, build_components

    sched_kw = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if pretrained in ("tiny", "random-real"):
        parts = build_components(
            "tiny" if pretrained == "tiny" else "sd15", seed=seed, in_channels=4
        )
        parts["scheduler"] = DDIMScheduler(**SD15_SCHEDULER_CONFIG, **sched_kw)
        return parts
    from ..pipelines.sd_parts import load_sd_parts

    return load_sd_parts(pretrained, "fpga-base", "model.pretrained", SD15_HOW)


class RepControlNetTrainer(Trainer):
    """Trains the copies, the adapter and the ID projections; exports the merged pipeline."""

    log_keys = ("loss", "lr")

    def __init__(self, config: RepControlNetConfig):
        super().__init__(config, config.training, config.optim)
        self.cfg = config

    def setup(self) -> None:
        from diffusers import DDPMScheduler

        from ..models.rep_controlnet import RepControlNet

        cfg = self.cfg
        parts = load_sd_components(cfg.model.pretrained, cfg.model.seed)
        self.vae, self.text_encoder = parts["vae"], parts["text_encoder"]
        self.tokenizer, self.scheduler = parts["tokenizer"], parts["scheduler"]
        self.train_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        self.vae.requires_grad_(False).eval().to(self.device)
        self.text_encoder.requires_grad_(False).eval().to(self.device)
        self.alphas_cumprod = self.train_scheduler.alphas_cumprod.to(self.device)
        self.identity = None
        if cfg.model.identity_encoder:
            from ..pipelines.id_encoding import load_identity_encoder

            self.identity = load_identity_encoder(cfg.model.identity_encoder)
            width = self.identity["resampler"].config.cross_attention_dim
            if cfg.model.id_dim not in (None, width):
                raise InputError(
                    f"model.identity_encoder: its F_id is {width} wide, model.id_dim is "
                    f"{cfg.model.id_dim} (leave model.id_dim unset to take the encoder's)"
                )
            id_dim = width
        else:  # None: the UNet's cross-attention width
            id_dim = cfg.model.id_dim
        model = RepControlNet(
            parts["unet"],
            init_scale=cfg.model.init_scale,
            inject_at=cfg.model.inject_at,
            adapter_channels=tuple(cfg.model.adapter_channels),
            id_dim=id_dim,
        )
        if cfg.training.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        self.face_cache: dict[str, torch.Tensor] = {}
        uses_faces = self._set_dataset()
        self.id_encoder = None
        if uses_faces:
            if self.identity is None:
                raise InputError(
                    "data: rows give face photos; set model.identity_encoder to the FPGA "
                    "pipeline folder whose encoder turns them into F_id"
                )
            from ..faces.embedders import get_embedder
            from ..pipelines.id_encoding import IdentityEncoder

            for part in ("resampler", "image_encoder"):
                self.identity[part].requires_grad_(False).to(self.device)
            embedder = get_embedder(
                self.identity["face_embedder"],
                weights=self.identity["face_embedder_weights"],
                device=self.device,
            )
            template = getattr(self.dataset, "face_template", None)
            if template is not None and template != embedder.template:
                raise InputError(
                    f"data.path: face crops use the {template!r} template, the identity "
                    f"encoder's embedder expects {embedder.template!r}"
                )
            self.id_encoder = IdentityEncoder(
                self.identity["resampler"], self.identity["image_encoder"], embedder
            )
        optimizer, lr_scheduler = self.make_optimizer(model.trainable_parameters())
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            model, optimizer, lr_scheduler
        )

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        from ..text import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, texts, self.device)

    @classmethod
    def count_examples(cls, config: RepControlNetConfig) -> int:
        data = config.data
        if (Path(data.path) / "metadata.jsonl").is_file():
            return len(ConditionDataset(data.path, data.resolution, data.dropout_text))
        return len(open_portraits(data.path))

    def _set_dataset(self) -> bool:
        """The dataset of ``data.path`` (a ``metadata.jsonl`` folder, or FPGA's portrait
        dataset); returns whether its identities are face images to encode."""
        cfg = self.cfg
        if (Path(cfg.data.path) / "metadata.jsonl").is_file():
            self.dataset = ConditionDataset(
                cfg.data.path, cfg.data.resolution, cfg.data.dropout_text, cfg.training.seed
            )
            self.collate = collate_conditions
            return self.dataset.uses_faces
        from .fpga import PortraitTrainDataset

        source = open_portraits(cfg.data.path)
        self.dataset = PortraitTrainDataset(
            source, cfg.data.resolution, cfg.data.condition, cfg.training.seed,
            cfg.data.dropout_text,
        )  # fmt: skip
        self.dataset.face_template = source.meta.get("face_template")
        self.collate = collate_portrait_conditions
        return cfg.model.id_dim != 0

    def identity_embeds(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """F_id ``(B, T, D)`` of the batch: precomputed, or from each row's face photo through
        the frozen identity encoder (cached per file), or from a portrait dataset's aligned
        face crops; ``None`` when the rows give none."""
        if batch.get("face_crops") is not None:
            if self.id_encoder is None:
                return None
            return self.id_encoder.encode_face_crops(batch["face_crops"].to(self.device))
        rows = []
        for pre, face in zip(batch["id_embeds"], batch["faces"]):
            if pre is None and face is not None:
                if face not in self.face_cache:
                    from ..io import load_image

                    image = load_image(face, name=f"data face {face}")
                    self.face_cache[face] = self.id_encoder.encode_identity([image], [face])[0]
                pre = self.face_cache[face]
            rows.append(pre)
        if all(r is None for r in rows):
            return None
        return torch.stack([r.to(self.device) for r in rows])

    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """L = ||eps - eps_theta(z_t, t, C, F_id, I)||^2 (the diffusion loss of FPGA eq. 3)."""
        from diffusers.utils.torch_utils import randn_tensor

        device = self.device
        with torch.no_grad():
            sf = self.vae.config.scaling_factor
            z0 = self.vae.encode(batch["pixels"].to(device)).latent_dist.sample(generator) * sf
            text = self.encode_text(batch["text"])
        noise = randn_tensor(z0.shape, generator=generator, device=device, dtype=z0.dtype)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator
        ).to(device)
        ab = alpha_bar(self.alphas_cumprod, t, z0)
        ids = self.identity_embeds(batch)
        pred = self.model(add_noise(z0, noise, ab), t, text, batch["condition"].to(device), ids)
        ptype = self.train_scheduler.config.prediction_type
        return diffusion_loss(pred, diffusion_target(noise, z0, ab, ptype)).mean()

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        with self.accelerator.accumulate(self.model):
            loss = self.compute_loss(batch, generator)
            self.clip_and_step(loss, self.model, self.optimizer, self.lr_scheduler)
        return {"loss": float(loss.detach())}

    def pipeline(self):
        """The merged :class:`RepControlNetPipeline` (Eq. 6 with the config's alpha, beta)."""
        from ..pipelines.rep_controlnet import merged_pipeline

        rep = self.accelerator.unwrap_model(self.model)
        parts = {
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "scheduler": self.scheduler,
        }
        return merged_pipeline(
            rep, parts, alpha=self.cfg.merge.alpha, beta=self.cfg.merge.beta, identity=self.identity
        )

    def export(self, folder: Path) -> None:
        from ..pipelines.rep_controlnet import save_merged

        rep = self.accelerator.unwrap_model(self.model)
        save_merged(self.pipeline(), rep, folder, self.cfg.merge.alpha, self.cfg.merge.beta)
