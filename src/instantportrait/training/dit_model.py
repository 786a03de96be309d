"""One DiT editor in memory for both trainers: the frozen base and its LoRA adapters.

A 12-20B transformer cannot be held three times (teacher, student, EMA), so the trainers keep
ONE set of base weights and switch PEFT adapters on it:

* IDE-Net trains the LoRA ``ide`` (on the attention q/k/v/out and the MLP projections of every
  block; the family's :attr:`DiTModel.lora_targets`);
* the IPNet student is a second LoRA, ``student``, initialised from ``ide``;
* the teacher is base + ``ide`` with ``student`` inactive (:meth:`DiTModel.adapter`);
* the EMA averages the parameters that require gradients: the trained adapter only.

The base is frozen, bf16 on a GPU and fp32 on the CPU; the adapters are fp32. Exports: a LoRA
file that diffusers' ``load_lora_weights`` reads, and a fused pipeline folder (base + adapter
merged) that the family's editor and the ``edit`` command load. The export reads the adapter
through :meth:`DiTModel.gather_adapter` (collective under FSDP2, see
:mod:`~instantportrait.training.sharding`) and merges it into the base read again from the
pretrained folder, so it never needs the sharded base whole.

What differs between the families (FLUX.1 Kontext:
:class:`~instantportrait.training.kontext_model.KontextModel`; Qwen-Image-Edit:
:class:`~instantportrait.training.qwen_edit_model.QwenEditModel`) is a handful of hooks: the
pipeline classes, the backbone, the LoRA targets, how a condition is encoded and guided, and the
exported editor's settings. Everything else here is shared.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..backbones.flow_backbone import scheduler_shift_mu
from .sharding import full_tensors

__all__ = [
    "DiTModel",
    "FAMILIES",
    "LORA_FILES",
    "flow_training_sigmas",
    "fuse_lora_",
    "is_dit_training_export",
    "model_class",
    "read_export_metadata",
    "training_dtype",
]

#: the file names of the exported adapters (in the diffusers LoRA format)
LORA_FILES = {"ide": "ide_lora.safetensors", "student": "student_lora.safetensors"}
METADATA = "instantportrait.json"

#: ``model.backbone`` (and an export's ``backbone``) -> the model class, ``module:Class``
FAMILIES = {
    "kontext": "instantportrait.training.kontext_model:KontextModel",
    "qwen-edit": "instantportrait.training.qwen_edit_model:QwenEditModel",
}


def model_class(family: str) -> type[DiTModel]:
    """The :class:`DiTModel` subclass of a family name (a key of :data:`FAMILIES`)."""
    module, _, name = FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), name)


def flow_training_sigmas(
    batch: int,
    image_seq_len: int,
    scheduler_config: dict[str, Any],
    generator: torch.Generator,
) -> torch.Tensor:
    """Noise levels for a training batch, as the rectified-flow DiTs' training draws them:
    ``u`` logit-normal (Esser et al. 2024 (SD3) §3.1, eq. 19, m = 0, s = 1), then the
    scheduler's resolution-dependent shift with ``mu`` linear in the image's token count
    (SD3 §5.3.2; the config's base/max shift and sequence lengths): exponential,
    ``sigma = e^mu / (e^mu + 1/u - 1)`` (FLUX's and Qwen-Image's ``time_shift_type``), or
    linear, ``sigma = mu / (mu + 1/u - 1)``. Without dynamic shifting the config's fixed
    ``shift`` s gives ``sigma = s u / (1 + (s - 1) u)``."""
    u = torch.sigmoid(torch.randn(batch, generator=generator))
    cfg = scheduler_config
    if cfg.get("use_dynamic_shifting", False):
        mu = scheduler_shift_mu(image_seq_len, cfg)
        shift = mu if cfg.get("time_shift_type", "exponential") == "linear" else math.exp(mu)
    else:
        shift = float(cfg.get("shift", 1.0))
    return shift * u / (1 + (shift - 1) * u)


@torch.no_grad()
def fuse_lora_(
    weights: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], scale: float
) -> int:
    """Merge a LoRA into base weights in place: ``W <- W + scale B A`` for every adapted linear
    (Hu et al. 2021, LoRA §4.1: ``h = W0 x + B A x``, scaled by ``alpha / r``), computed in fp32
    and stored in ``W``'s dtype.

    Args:
        weights: the base's state (``<module>.weight`` keys), changed in place.
        lora: the adapter in PEFT's saved form (``<module>.lora_A.weight``/``lora_B.weight``).
        scale: ``lora_alpha / r``.

    Returns the number of weights merged; a LoRA module the base lacks raises ``KeyError``.
    """
    merged = 0
    for key, a in lora.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        b = lora[f"{module}.lora_B.weight"]
        w = weights[f"{module}.weight"]
        w.copy_((w.float() + scale * (b.float() @ a.float())).to(w.dtype))
        merged += 1
    return merged


def training_dtype(device: torch.device) -> torch.dtype:
    """The frozen networks' dtype on ``device``: bf16 on a GPU, fp32 elsewhere (bf16 matmuls
    run far slower than fp32 on most CPUs)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def read_export_metadata(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METADATA
    return json.loads(path.read_text()) if path.is_file() else {}


def is_dit_training_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an IDE-Net or IPNet export of the DiT trainers (any family)."""
    return read_export_metadata(folder).get("backbone") in FAMILIES


class DiTModel:
    """A DiT editor's components with one frozen base transformer and named LoRA adapters.

    Args:
        components: the family's pipeline components (``transformer`` and ``scheduler`` at
            least; the VAE and encoders may be ``None`` where a caller brings its own latents
            and condition, as the GPU suite does).
        device: where the networks run.
        rank: the LoRA rank (alpha = rank, so the update's scale is 1).
        pretrained: the folder the components came from; the export reads the base from it.
        shard: the transformer will be sharded by FSDP2: it stays on the CPU here and
            ``fully_shard`` moves each process's shard to its device (never the whole base on
            one GPU).
        dtype: the frozen networks' dtype (the VAE stays fp32); default bf16 on a GPU and
            fp32 elsewhere.

    :meth:`from_pretrained` builds it from a pipeline folder (what the trainers do). A family
    sets the class attributes and the hooks under "the family" below.
    """

    #: the family's name: ``model.backbone`` and the export's ``backbone``
    family: str = ""
    #: PEFT's ``target_modules`` (a full-match regex over the transformer's module names)
    lora_targets: str = ""
    #: the guidance the family's teacher edits with when the config gives none
    default_guidance: float = 1.0
    #: one line naming what ``model.pretrained`` must be
    folder_hint: str = "a pipeline folder is needed"
    #: the modules frozen and moved to the device (those present)
    frozen_modules = ("vae", "text_encoder", "text_encoder_2", "transformer")

    def __init__(
        self,
        components: dict[str, Any],
        device: torch.device,
        rank: int = 64,
        pretrained: str | None = None,
        shard: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.pretrained, self.rank, self.device = pretrained, int(rank), device
        self.dtype = training_dtype(device) if dtype is None else dtype
        skip = ("image_encoder", "feature_extractor")
        self.components = {k: v for k, v in components.items() if k not in skip}
        for name in self.frozen_modules:
            module = self.components.get(name)
            if module is None:
                continue
            module.requires_grad_(False).eval()
            # one call per module: each tensor is cast and moved on its own (never a second
            # whole copy of a 12B transformer in another dtype on the GPU)
            module.to(
                device=None if (shard and name == "transformer") else device,
                dtype=torch.float32 if name == "vae" else self.dtype,
            )
        self.transformer = self.components["transformer"]
        self.scheduler = self.components["scheduler"]
        self.backbone = self.make_backbone()

    @classmethod
    def from_pretrained(
        cls, pretrained: str, device: torch.device, rank: int = 64, shard: bool = False
    ) -> DiTModel:
        """The components of the family's pipeline folder ``pretrained`` (``init-tiny`` for
        tests), read in the training dtype (the published transformers ship bf16: read as
        fp32, FLUX.1 Kontext's alone would take 48 GB); a missing folder is one line."""
        from ..devices import diffusers_dtype
        from ..errors import InputError
        from .editing import tiny_hint

        if not Path(pretrained).is_dir():
            raise InputError(f"model.pretrained={pretrained}: {cls.folder_hint}")
        with tiny_hint("model.pretrained"):
            pipe = cls.pipeline_class().from_pretrained(
                pretrained, **diffusers_dtype(training_dtype(device))
            )
        return cls.from_pipeline(pipe, device, rank, pretrained=str(pretrained), shard=shard)

    @classmethod
    def from_pipeline(cls, pipe: Any, device: torch.device, rank: int, **kw: Any) -> DiTModel:
        """The model over a loaded pipeline's components (a family may read its config)."""
        return cls(pipe.components, device, rank, **kw)

    # ---- the family ---------------------------------------------------------------------
    @classmethod
    def pipeline_class(cls) -> type:
        """The pipeline class that reads the pretrained folder."""
        raise NotImplementedError

    @classmethod
    def transformer_class(cls) -> type:
        """The transformer's diffusers class (the fused export reads the base with it)."""
        raise NotImplementedError

    @classmethod
    def lora_pipeline_class(cls) -> type:
        """The diffusers pipeline whose ``save_lora_weights`` writes the LoRA file."""
        raise NotImplementedError

    def make_backbone(self) -> Any:
        """The family's edit backbone over :attr:`components`."""
        raise NotImplementedError

    def edit_pipeline(self, transformer: Any, **settings: Any) -> Any:
        """The family's editor over the components with ``transformer`` (and its
        ``settings``: ``recommended_steps``, ``default_guidance_scale``)."""
        raise NotImplementedError

    def export_settings(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The exported editor's settings for an export described by ``metadata``: its
        ``recommended_steps`` (1 for the student) and its guidance as the editor's default."""
        settings: dict[str, Any] = {}
        if "recommended_steps" in metadata:
            settings["recommended_steps"] = int(metadata["recommended_steps"])
        if metadata.get("guidance") is not None:
            settings["default_guidance_scale"] = float(metadata["guidance"])
        return settings

    def training_sigmas(self, batch: int, latent_hw: tuple[int, int], generator) -> torch.Tensor:
        """Noise levels drawn by the family's schedule (:func:`flow_training_sigmas` with the
        scheduler's config and the packed image's token count)."""
        h, w = latent_hw
        config = dict(self.scheduler.config)
        return flow_training_sigmas(batch, (h // 2) * (w // 2), config, generator)

    def encode_condition(
        self,
        instructions: list[str],
        pixels: torch.Tensor,
        keep: torch.Tensor,
        max_sequence_length: int,
        guided: bool = False,
    ) -> Any:
        """The condition of a batch: the instructions (the empty string where the text is
        dropped), the edit images ``pixels`` in [-1, 1] (``keep`` False where the image is
        dropped); ``guided``: with what the family's guided teacher needs beside it."""
        raise NotImplementedError

    def unguided(self, cond: Any) -> Any:
        """``cond`` for a call without the family's CFG branch (the condition itself where
        guidance is an input of the network)."""
        return cond

    def condition_rows(self, cond: Any, rows: torch.Tensor) -> Any:
        """The rows ``rows`` of a condition."""
        raise NotImplementedError

    def validation_kwargs(self, max_sequence_length: int) -> dict[str, Any]:
        """Extra arguments of the editor's call in validation."""
        return {}

    # ---- adapters ---------------------------------------------------------------------
    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.rank,
            init_lora_weights=True,
            target_modules=self.lora_targets,
        )

    def add_adapter(self, name: str, trainable: bool) -> list[torch.nn.Parameter]:
        """Add LoRA ``name`` (B = 0: the base's function unchanged), fp32; its parameters."""
        import warnings

        with warnings.catch_warnings():  # several adapters on one model is the design here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            self.transformer.add_adapter(self.lora_config(), adapter_name=name)
        params = self.adapter_parameters(name)
        for p in params:
            p.data = p.data.float()
        self.set_trainable(name if trainable else None)
        return params

    def adapter_parameters(self, name: str) -> list[torch.nn.Parameter]:
        return [p for n, p in self.transformer.named_parameters() if f".{name}." in n]

    def set_trainable(self, name: str | None) -> None:
        """Only adapter ``name``'s parameters require gradients (none when ``None``)."""
        for n, p in self.transformer.named_parameters():
            p.requires_grad_(name is not None and f".{name}." in n)

    def copy_adapter(self, source: str, target: str) -> None:
        """Initialise adapter ``target`` with ``source``'s weights (the student from ``ide``)."""
        named = dict(self.transformer.named_parameters())
        with torch.no_grad():
            for n, p in named.items():
                if f".{source}." in n:
                    named[n.replace(f".{source}.", f".{target}.")].copy_(p)

    def active_adapters(self) -> list[str]:
        return list(self.transformer.active_adapters())

    @contextlib.contextmanager
    def adapter(self, name: str) -> Iterator[None]:
        """Run with only adapter ``name`` active (PEFT's ``set_adapter``), then restore the
        previous adapters and every parameter's ``requires_grad`` (PEFT toggles them)."""
        t = self.transformer
        before = self.active_adapters()
        flags = [(p, p.requires_grad) for p in t.parameters()]
        t.set_adapter(name)
        try:
            yield
        finally:
            t.set_adapter(before if len(before) > 1 else before[0])
            for p, flag in flags:
                p.requires_grad_(flag)

    @property
    def lora_scale(self) -> float:
        """``lora_alpha / r`` of the adapters (1: alpha = rank)."""
        config = self.lora_config()
        return config.lora_alpha / config.r

    def gather_adapter(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter ``name`` whole, fp32 on the CPU, in PEFT's saved form (keys without the
        adapter name). Collective under FSDP2: every process calls it."""
        from peft.utils import get_peft_model_state_dict

        whole = full_tensors(self.transformer, lambda n: f".{name}." in n)
        state = get_peft_model_state_dict(self.transformer, state_dict=whole, adapter_name=name)
        return {k: v.float().contiguous() for k, v in state.items()}

    def load_adapter_file(self, path: str | Path, name: str) -> None:
        """Load an exported LoRA file (diffusers' ``transformer.``-prefixed keys) into ``name``."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
        result = set_peft_model_state_dict(self.transformer, state, adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k]
        if missing:
            from ..errors import InputError

            raise InputError(f"{path}: not a LoRA of this transformer (missing {missing[0]})")

    # ---- export -----------------------------------------------------------------------
    def save_lora(self, folder: Path, name: str, weights: dict[str, torch.Tensor]) -> None:
        """The adapter as a LoRA file in diffusers' format (``load_lora_weights`` reads it)."""
        self.lora_pipeline_class().save_lora_weights(
            str(folder), transformer_lora_layers=weights, weight_name=LORA_FILES[name]
        )

    @torch.no_grad()
    def save_fused(
        self, folder: Path, lora: dict[str, torch.Tensor], settings: dict[str, Any] | None = None
    ) -> None:
        """The family's editor folder whose transformer is the base, read again from
        ``pretrained`` in the training dtype, with ``lora`` (PEFT's saved form, from
        :meth:`gather_adapter`) merged in by :func:`fuse_lora_`; the live model is untouched."""
        from ..devices import diffusers_dtype

        if self.pretrained is None:
            raise ValueError("a fused export reads the base from its folder: none was given")
        fused = self.transformer_class().from_pretrained(
            self.pretrained, subfolder="transformer", **diffusers_dtype(self.dtype)
        )
        weights = dict(fused.named_parameters())
        if not fuse_lora_(weights, lora, self.lora_scale):
            raise ValueError("the adapter holds no LoRA weights to merge")
        pipe = self.edit_pipeline(fused, **(settings or {}))
        pipe.save_pretrained(str(folder), safe_serialization=True)

    def export(
        self, folder: Path, name: str, lora: dict[str, torch.Tensor], metadata: dict[str, Any]
    ) -> None:
        """Write ``folder`` atomically (the main process): the fused editor (its settings from
        :meth:`export_settings`), adapter ``name``'s weights ``lora`` (from
        :meth:`gather_adapter`) as a LoRA file and ``instantportrait.json`` (the family, where
        the base lives, the rank, ``metadata``)."""
        from ..writer import atomic_directory

        with atomic_directory(folder, overwrite=True) as tmp:
            tmp = Path(tmp)
            self.save_fused(tmp, lora, self.export_settings(metadata))
            self.save_lora(tmp, name, lora)
            record = {
                "backbone": self.family,
                "base": self.pretrained,
                "lora_rank": self.rank,
                "adapter": name,
                "lora_file": LORA_FILES[name],
                **metadata,
            }
            (tmp / METADATA).write_text(json.dumps(record, indent=2))

    @contextlib.contextmanager
    def averaged(self, ema: Any) -> Iterator[None]:
        """Run with the EMA's weights in the trained adapter (none: the live weights)."""
        if ema is None:
            yield
            return
        params = [p for p in self.transformer.parameters() if p.requires_grad]
        backup = [p.detach().clone() for p in params]
        ema.copy_to(self.transformer)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
