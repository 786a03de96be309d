"""What both DiT trainers (IDE-Net and IPNet on FLUX.1 Kontext or Qwen-Image-Edit) share: the
one model in memory (:class:`~instantportrait.training.dit_model.DiTModel`, the family's
subclass), encoding a pair through the backbone, differentiable decoding, checkpoints that
hold only the adapters, validation edits, the export's gathering of the trained adapter. The
code is the same for every family; the model's hooks carry what differs.

Under FSDP2 (``examples/accelerate/fsdp_kontext.yaml``) the transformer is sharded: accelerate
then checkpoints its shards in its own sharded format (the adapters only, as on one process),
validation's edits run on every process, and the adapter is gathered on every process before
the main process exports (see :mod:`~instantportrait.training.sharding`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from .dit_model import DiTModel, model_class
from .sharding import check_fsdp_version, checkpoint_only, runs_collectively

#: the checkpoint's file of the transformer's LoRA weights (all adapters)
ADAPTERS_FILE = "adapters.safetensors"


class DiTTrainerMixin:
    """What both DiT trainers share: the model in memory, encoding, decoding."""

    #: the DiT model (its family's :class:`~instantportrait.training.dit_model.DiTModel`)
    dit_model: DiTModel
    #: the teacher's guidance (Kontext: the distilled input; Qwen: true CFG's scale) and
    #: T5's token count (Kontext) the trainer conditions with
    guidance: float
    max_sequence_length: int
    #: the guidance the validation edits run with when the settings give none
    edit_guidance: float | None = None
    #: the adapter this trainer trains and exports (``ide`` or ``student``)
    adapter_name: str
    #: the trained adapter whole (the EMA's weights when kept), gathered for the export
    export_weights: dict[str, torch.Tensor] | None = None

    def load_dit(self, family: str, pretrained: str, rank: int) -> DiTModel:
        """The family's model from ``pretrained``, kept on the CPU when FSDP2 shards it."""
        acc = self.accelerator
        check_fsdp_version(acc, f"model.backbone={family}")
        shard = acc.distributed_type == DistributedType.FSDP
        m = model_class(family).from_pretrained(pretrained, self.device, rank, shard=shard)
        self.dit_model, self.backbone = m, m.backbone
        self.vae, self.scheduler = m.components["vae"], m.scheduler
        return m

    def use_prepared(self, model: torch.nn.Module) -> None:
        """Route the backbone's calls through the accelerate-prepared transformer (DDP/FSDP)
        and checkpoint only its adapters (the frozen base is the pretrained folder's): under
        DDP or one process through accelerate's save hooks (``adapters.safetensors``), under
        FSDP2 in accelerate's sharded checkpoint (:func:`~.sharding.checkpoint_only`)."""
        if model is not self.dit_model.transformer and not hasattr(model, "config"):
            model.config = self.dit_model.transformer.config
        self.backbone.transformer = model
        acc = self.accelerator
        acc.register_save_state_pre_hook(self._save_adapters)
        acc.register_load_state_pre_hook(self._load_adapters)
        if acc.distributed_type == DistributedType.FSDP:  # accelerate saves FSDP's shards itself
            checkpoint_only(self.dit_model.transformer, lambda name: "lora_" in name)

    def _is_transformer(self, model) -> bool:
        return self.accelerator.unwrap_model(model) is self.dit_model.transformer

    def _save_adapters(self, models, weights, output_dir) -> None:
        """accelerate's save hook: the transformer's LoRA weights go to ``adapters.safetensors``
        instead of the whole base (FSDP saves its own shards: left alone)."""
        from safetensors.torch import save_file

        if len(weights) != len(models):
            return
        for i, model in enumerate(models):
            if self._is_transformer(model):
                state = weights.pop(i)
                lora = {k: v.contiguous() for k, v in state.items() if "lora_" in k}
                save_file(lora, str(Path(output_dir) / ADAPTERS_FILE))
                (Path(output_dir) / ADAPTERS_FILE).chmod(0o644)  # as accelerate's own files
                return

    def _load_adapters(self, models, input_dir) -> None:
        """accelerate's load hook, the inverse of :meth:`_save_adapters`."""
        from safetensors.torch import load_file

        path = Path(input_dir) / ADAPTERS_FILE
        for i, model in enumerate(models):
            if self._is_transformer(model) and path.is_file():
                models.pop(i)
                state = load_file(str(path))
                result = self.dit_model.transformer.load_state_dict(state, strict=False)
                if result.unexpected_keys:
                    from ..errors import InputError

                    raise InputError(
                        f"{path}: adapters of another model ({result.unexpected_keys[0]})"
                    )
                return

    def collect_export(self) -> None:
        """Every process: the trained adapter whole, with the EMA's weights when the run keeps
        one (collective under FSDP2); only the main process, which exports, keeps it."""
        with self.dit_model.averaged(self.ema):
            weights = self.dit_model.gather_adapter(self.adapter_name)
        self.export_weights = weights if self.accelerator.is_main_process else None

    def exported_adapter(self) -> dict[str, torch.Tensor]:
        """What :meth:`collect_export` gathered (gathered now in a single-process export)."""
        if self.export_weights is None:
            self.collect_export()
        return self.export_weights

    def encode_pair(self, batch: dict[str, Any], max_sequence_length: int, guided: bool = False):
        """The edit image's latents (zeroed where the image is dropped) and the condition
        (the model's :meth:`~.dit_model.DiTModel.encode_condition`; ``guided``: with what the
        guided teacher needs)."""
        x_in = batch["input"].to(self.device)
        keep = (~batch["drop_image"]).to(self.device)
        with torch.no_grad():
            image_latents = self.backbone.encode_image(x_in).float()
            image_latents = image_latents * keep.view(-1, 1, 1, 1).to(image_latents)
            cond = self.dit_model.encode_condition(
                list(batch["instruction"]), x_in, keep, max_sequence_length, guided
            )
        return x_in, keep, image_latents, cond

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents to images in [-1, 1]; differentiable (the VAE is frozen, not detached)."""
        return self.backbone.decode(latents.float()).float().clamp(-1, 1)

    def encode_text(self, texts):  # pragma: no cover - the UNet's path; never on Kontext
        raise NotImplementedError("the DiT trainers encode through the backbone")

    def validate(self, step: int) -> dict[str, float]:
        """Edits of the validation set with the current adapter (IDE-Net: ``validation.steps``
        of the teacher's sampler; IPNet: one step), saved as a grid with dlib distances. A
        sharded transformer runs the edits on every process; the main process records them."""
        acc = self.accelerator
        if not runs_collectively(self.dit_model.transformer, acc):
            return {}
        from .validation import run_validation, validation_items

        m = self.dit_model
        pipe = m.edit_pipeline(m.transformer)
        pipe.set_progress_bar_config(disable=True)
        extra = m.validation_kwargs(self.max_sequence_length)
        default = self.guidance if self.edit_guidance is None else self.edit_guidance

        def edit(prompt, image, num_inference_steps, guidance_scale, generator, **_):
            scale = default if guidance_scale is None else guidance_scale
            return pipe(
                prompt,
                image,
                num_inference_steps=num_inference_steps,
                guidance_scale=scale,
                generator=generator,
                **extra,
            )

        was_training = m.transformer.training
        m.transformer.eval()
        try:
            v = self.cfg.validation
            return run_validation(
                edit,
                validation_items(v, self.dataset.source),
                self.run_dir / "validation" / f"step-{step:06d}.png",
                embedder=self.validation_embedder() if acc.is_main_process else None,
                steps=v.steps,
                guidance_scale=v.guidance_scale,
                resolution=v.resolution,
                seed=v.seed,
                record=acc.is_main_process,
            )
        finally:
            m.transformer.train(was_training)


#: the name of the first family's mixin, kept for existing imports
KontextTrainerMixin = DiTTrainerMixin
