"""FaceA-Net's tuning configuration (Wang et al., AAAI 2025, §3.2): what ``train faceanet``
reads from its JSON/TOML config and ``--set`` overrides.

``model``: the SD-inpainting base, the LoRA and the ``[feat]`` vectors (``init_from``: a
tuned identity to continue from, the attribute swap of Fig. 7); ``data``: the person's
photos, their crops and task masks; ``tuning``: the objective of eq. 2 (which tasks, which
attribute, the embeddings' learning rate); ``validation``: the repainted prompts. Each
section checks its own values, with one line naming the key. The tuning that runs it is
:mod:`.faceanet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import check
from .run_settings import OptimConfig, RunConfig

AttributeName = Literal["", "left_eye", "right_eye", "nose", "mouth"]


@dataclass
class FaceANetModelConfig:
    """G_id, the LoRA and the ``[feat]`` vectors."""

    #: SD-inpainting folder or Hub id; ``tiny`` / ``random-real`` for tests and benchmarks;
    #: empty: the identity's base with ``init_from``, else
    #: stable-diffusion-v1-5/stable-diffusion-inpainting (the maintained mirror)
    base: str = ""
    seed: int = 0
    lora_rank: int = 48
    lora_alpha: float = 48.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    feat_space: Literal["output", "input"] = "output"
    #: vectors per task; 0: 3 for a man, 4 for a woman (the paper's n)
    num_vectors: int = 0
    #: False: the ablation of Table 2 without embeddings (plain T_face / T_v prompts)
    use_embeddings: bool = True
    #: a tuned identity (folder) to continue from: the attribute swap of Fig. 7
    init_from: str = ""

    def __post_init__(self) -> None:
        check(self.lora_rank >= 1, "model.lora_rank: must be at least 1")
        check(self.num_vectors >= 0, "model.num_vectors: must be >= 0 (0: by gender)")
        check(bool(self.lora_targets), "model.lora_targets: at least one module name")


@dataclass
class FaceANetDataConfig:
    """The person's photos, cropped around the face; masks from the face stack's landmarks."""

    images: list[str] = field(default_factory=list)
    #: man or woman (sets "a man/woman ..." and n); empty: taken from ``model.init_from``
    gender: Literal["", "man", "woman"] = ""
    resolution: int = 512
    #: crop side = this x the face box's long side (head and shoulders)
    crop_scale: float = 2.25
    mask_shape: Literal["box", "polygon"] = "box"
    #: boxes grown by this fraction of the face box's side on each side
    mask_dilate: float = 0.05
    #: horizontal flips (left/right eye masks swapped with the image)
    random_flip: bool = False
    #: the face detector as a spec (``hog``, ``mmod``, ``mtcnn``, ``scrfd:FILE.onnx``, an
    #: insightface model folder; CLI ``--detector``/``--detector-weights``)
    detector: str = "hog"
    #: boxes from the face stack's landmarks, or from Grounding-DINO (needs its weights)
    mask_source: Literal["landmarks", "grounding-dino"] = "landmarks"
    #: a local Grounding-DINO folder (transformers format) for ``mask_source=grounding-dino``
    grounding_dino: str = ""
    #: tune even when the photos look like different people (dlib distance >= 0.6)
    allow_mixed_identities: bool = False

    def __post_init__(self) -> None:
        check(
            self.mask_source != "grounding-dino" or bool(self.grounding_dino),
            "data.grounding_dino: the Grounding-DINO folder is needed for that mask source",
        )
        check(
            self.resolution >= 8 and self.resolution % 8 == 0,
            f"data.resolution: a multiple of 8, got {self.resolution}",
        )
        check(self.crop_scale >= 1.0, "data.crop_scale: must be >= 1")
        check(self.mask_dilate >= 0.0, "data.mask_dilate: must be >= 0")
        from ..faces.detectors import FaceDetectorConfig

        FaceDetectorConfig.from_spec(self.detector)  # one line when it cannot be used


@dataclass
class FaceANetTuneConfig:
    """The objective of eq. 2 and its options."""

    #: both terms (eq. 2), only the global face task, or only the local task (attribute swap)
    tasks: Literal["both", "global", "local"] = "both"
    #: restrict the local task to one attribute (attribute swap); empty: uniform over all four
    attribute: AttributeName = ""
    #: one attribute per step for the whole batch (the paper) or one per sample
    attribute_sampling: Literal["step", "sample"] = "step"
    #: mean over the mask instead of the full latent (off: the paper's literal loss)
    mask_weighted: bool = False
    #: back-propagate each task's term as soon as it is computed: its activations are freed
    #: before the other task's forward (same gradient as one backward of the sum; lower peak)
    backward_per_task: bool = True
    lr_embeddings: float = 2e-3
    weight_decay_embeddings: float = 0.0

    def __post_init__(self) -> None:
        check(self.lr_embeddings > 0, "tuning.lr_embeddings: must be positive")


@dataclass
class FaceANetValidationConfig:
    """Repaint the first crop's face with T'_id for each prompt; a grid per validation."""

    prompts: list[str] = field(default_factory=lambda: ["a {noun}, smiling"])
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0


@dataclass
class FaceANetConfig:
    model: FaceANetModelConfig = field(default_factory=FaceANetModelConfig)
    data: FaceANetDataConfig = field(default_factory=FaceANetDataConfig)
    tuning: FaceANetTuneConfig = field(default_factory=FaceANetTuneConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.2e-4))
    training: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/faceanet"))
    validation: FaceANetValidationConfig = field(default_factory=FaceANetValidationConfig)

    def check_inputs(self) -> None:
        """The run's inputs are given (checked when tuning starts, not by ``--dry-run``)."""
        check(bool(self.data.images), "data.images: the person's photos are required (--images)")
        check(
            bool(self.data.gender) or bool(self.model.init_from),
            "data.gender: man or woman is required (--gender)",
        )

    def __post_init__(self) -> None:
        if self.tuning.attribute:
            check(self.tuning.tasks == "local", "tuning.attribute: needs tuning.tasks=local")
