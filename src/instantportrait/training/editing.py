"""What every trainer of an instruction editor shares (IDE-Net, IPNet, later FaceA-Net's
editor): the frozen VAE and text encoder, the pair dataset, text encoding, differentiable
decoding, validation edits and the export as an :class:`InstantPortraitPipeline`."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.dataset import ConditioningDropout, PairDataset, collate_pairs, detect_face_points
from ..data.pairs import open_pair_source
from ..errors import InputError
from .config import check
from .loop import Trainer
from .validation import run_validation, validation_items


@dataclass
class DataConfig:
    path: str = ""
    #: long side of the (square, centre-cropped) training images
    resolution: int = 256
    #: ``[width, height]``: train at this non-square size instead (centre crop to its aspect,
    #: landmarks transformed with every crop, resize and flip); e.g. the paper's 1024 x 576
    size: list[int] | None = None
    random_flip: bool = True
    crop_jitter: float = 0.0
    dropout_text: float = 0.05
    dropout_image: float = 0.05
    dropout_both: float = 0.05
    #: detect landmarks for rows that have none (the face stack: SCRFD's or MTCNN's own five
    #: keypoints with those detectors, dlib's 5 points with dlib's)
    detect_faces: bool = True
    #: the face detector as a spec (``hog``, ``mmod``, ``mtcnn``, ``scrfd:FILE.onnx``, an
    #: insightface model folder; CLI ``--detector``/``--detector-weights``)
    detector: str = "hog"

    def __post_init__(self) -> None:
        from ..faces.detectors import FaceDetectorConfig

        check(
            self.resolution >= 8 and self.resolution % 8 == 0,
            f"data.resolution: a multiple of 8, got {self.resolution}",
        )
        FaceDetectorConfig.from_spec(self.detector)  # one line when it cannot be used
        check(self.crop_jitter >= 0, "data.crop_jitter: must be >= 0")
        check(
            self.size is None
            or (len(self.size) == 2 and all(v >= 8 and v % 8 == 0 for v in self.size)),
            f"data.size: [width, height], multiples of 8; got {self.size}",
        )


@dataclass
class ValidationConfig:
    """Edits of a fixed set, saved as a grid with each edit's identity similarity."""

    images: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    count: int = 4
    steps: int = 20
    #: ``None``: the validated pipeline's own default (7.5 / 1.5 multi-step, 1 for IPNet)
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    resolution: int = 256
    seed: int = 0


#: the settings that build tiny random stand-ins of the pretrained networks (tests, small machines)
TINY_SETTINGS = (
    "model.pretrained=tiny (IDE-Net), teacher.path=tiny, discriminator.backbone=tiny, "
    "triplet.dino=tiny (IPNet)"
)


@contextlib.contextmanager
def tiny_hint(setting: str):
    """Re-raise a model-not-found error naming ``setting`` and the tiny settings."""
    from ..errors import ModelNotFoundError

    try:
        yield
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"{setting}: {exc}. To try training without the pretrained models, use the tiny "
            f"settings: {TINY_SETTINGS}"
        ) from exc


def load_edit_components(
    pretrained: str, seed: int = 0, setting: str = "model.pretrained"
) -> dict[str, Any]:
    """vae, text_encoder, tokenizer, unet, scheduler (+ a DDPM ``train_scheduler``).

    ``pretrained``: a pipeline folder or Hub id; ``tiny`` (tests, dry runs) or ``random-real``
    (the real InstructPix2Pix architecture with random weights, for benchmarks).
    """
    from diffusers import DDPMScheduler

    if pretrained in ("tiny", "random-real"):
        from ..components import build_components

        size = "tiny" if pretrained == "tiny" else "instruct-pix2pix"
        parts = build_components(size, seed=seed)
    else:
        from ..pipelines import InstantPortraitPipeline

        with tiny_hint(setting):
            parts = dict(InstantPortraitPipeline.from_pretrained(pretrained).components)
        parts = {k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    if parts["unet"].config.in_channels != 8:
        raise InputError(
            f"{pretrained}: UNet has {parts['unet'].config.in_channels} input channels; an "
            "InstructPix2Pix-format checkpoint (8 channels) is needed"
        )
    parts["train_scheduler"] = DDPMScheduler.from_config(parts["scheduler"].config)
    return parts


class EditTrainer(Trainer):
    """A :class:`Trainer` of an InstructPix2Pix-format editor. Subclasses set
    :attr:`pipeline_config` (the exported pipeline's recommended steps and guidance)."""

    pipeline_config: dict[str, Any] = {"recommended_steps": 20}

    def load_components(self, pretrained: str, seed: int = 0, setting: str = "model.pretrained"):
        """Load the components, freeze VAE and text encoder on the device; return the UNet."""
        parts = load_edit_components(pretrained, seed, setting)
        self.vae, self.text_encoder = parts["vae"], parts["text_encoder"]
        self.tokenizer, self.scheduler = parts["tokenizer"], parts["scheduler"]
        self.train_scheduler = parts["train_scheduler"]
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            self.precision, torch.float32
        )
        self.vae.requires_grad_(False).eval().to(self.device)
        self.text_encoder.requires_grad_(False).eval().to(self.device, dtype=weight_dtype)
        self.alphas_cumprod = self.train_scheduler.alphas_cumprod.to(self.device)
        self.prediction_type = self.train_scheduler.config.prediction_type
        return parts["unet"]

    @classmethod
    def count_examples(cls, config: Any) -> int:
        return len(open_pair_source(config.data.path))

    def build_dataset(self, data, need_faces: bool) -> None:
        """The pair dataset of a ``DataConfig``; face points detected when ``need_faces``
        (a row's own keypoints or landmarks come first)."""
        self.dataset = PairDataset(
            open_pair_source(data.path),
            resolution=data.resolution,
            random_flip=data.random_flip,
            crop_jitter=data.crop_jitter,
            dropout=ConditioningDropout(data.dropout_text, data.dropout_image, data.dropout_both),
            seed=self.run.seed,
            landmark_fn=(
                detect_face_points(data.detector) if need_faces and data.detect_faces else None
            ),
            size=None if data.size is None else tuple(data.size),
        )
        self.collate = collate_pairs

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """CLIP embeddings ``(B, 77, D)`` of instructions (the empty string when dropped)."""
        from ..text import encode_prompts

        return encode_prompts(self.tokenizer, self.text_encoder, texts, self.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents to images in [-1, 1]; differentiable (the VAE is frozen, not detached)."""
        sf = self.vae.config.scaling_factor
        return self.vae.decode(latents.float() / sf).sample.clamp(-1, 1)

    # ---- validation and export ----------------------------------------------------------
    def pipeline(self, use_ema: bool = False):
        """An :class:`InstantPortraitPipeline` on the current (or EMA-averaged) weights."""
        from ..pipelines import InstantPortraitPipeline

        unet = self.accelerator.unwrap_model(self.model)
        if use_ema and self.ema is not None:
            unet = copy.deepcopy(unet)
            self.ema.copy_to(unet)
        pipe = InstantPortraitPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=unet,
            scheduler=self.scheduler,
            **self.pipeline_config,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validation_embedder(self):
        """The embedder that scores validation edits (default: dlib's port, when installed)."""
        try:
            from ..faces.embedders import get_embedder

            return get_embedder("dlib", device=self.device)
        except ImportError:
            return None

    def validate(self, step: int) -> dict[str, float]:
        if not self.accelerator.is_main_process:
            return {}
        unet = self.accelerator.unwrap_model(self.model)
        was_training = unet.training
        unet.eval()
        try:
            v = self.cfg.validation
            return run_validation(
                self.pipeline(),
                validation_items(v, self.dataset.source),
                self.run_dir / "validation" / f"step-{step:06d}.png",
                embedder=self.validation_embedder(),
                steps=v.steps,
                guidance_scale=v.guidance_scale,
                image_guidance_scale=v.image_guidance_scale,
                resolution=v.resolution,
                seed=v.seed,
            )
        finally:
            unet.train(was_training)

    def export(self, folder: Path) -> None:
        pipe = self.pipeline(use_ema=True)
        pipe.unet.eval()
        pipe.save_pretrained(folder)
        self.export_metadata(folder, pipe)

    def export_metadata(self, folder: Path, pipe) -> None:
        """Extra files beside the exported pipeline (default none)."""
