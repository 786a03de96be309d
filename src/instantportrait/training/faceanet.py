"""FaceA-Net test-time tuning (Wang et al., AAAI 2025, §3.2): a PEFT LoRA on an SD-inpainting
UNet plus the ``[feat]`` vectors, trained on ~3 photos of one person with eq. 2.

Each step (batch of crops drawn from the photos): the **global task** masks the whole face
and reconstructs it with ``T_face`` ("a woman face" + its feat vectors); the **local task**
draws one attribute ``v`` of left eye / right eye / nose / mouth uniformly (once per step;
``tuning.attribute_sampling=sample`` draws per sample), masks it and reconstructs it with
``T_v``, with its own timestep and noise. ``L_A`` is their sum
(:func:`~instantportrait.losses.attribute.attribute_reconstruction_loss`). Only the LoRA and
the vectors learn: the UNet base, VAE and text encoder are frozen.

Attribute swap (the paper's Fig. 7): ``model.init_from`` a tuned identity, new photos,
``tuning.tasks=local`` and ``tuning.attribute=nose``: about 100 steps of the local task only.
Checkpoints hold only the trainable tensors (LoRA + vectors), never the base UNet. The
configuration (``model``, ``data``, ``tuning``, ``validation``) is :mod:`.faceanet_config`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..losses.attribute import attribute_term
from ..models.feat_embeddings import (
    ATTRIBUTES,
    DEFAULT_NUM_VECTORS,
    TASKS,
    FeatEmbeddings,
    encode_with_feats,
    task_prompt,
    tokenize,
)
from ..parameterization import add_noise, alpha_bar
from ..pipelines.faceanet_parts import (
    ADAPTER,
    DEFAULT_BASE,
    add_lora,
    inpaint_unet_input,
    load_identity,
    masked_image,
    read_identity_meta,
    save_identity,
)
from .faceanet_config import FaceANetConfig
from .faceanet_data import PhotoCrops, collate, prepare_crops
from .loop import Trainer


# ---- the trainable model ---------------------------------------------------------------
class ParameterView(nn.Module):
    """Some parameters of other modules, registered under flat names (for checkpoints).

    The parameters are shared, not copied: loading a state into the view writes into the
    model. This keeps the base UNet out of every checkpoint.
    """

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        super().__init__()
        for name, p in named:
            self.register_parameter(name.replace(".", "__"), p)


class FaceANetTunable(nn.Module):
    """The UNet with its LoRA and the ``[feat]`` conditioning: ``eps_theta(x, t, task)``."""

    def __init__(self, unet, text_encoder, input_ids, eos_token_id, feats):
        super().__init__()
        self.unet, self.feats = unet, feats
        self._text_encoder = [text_encoder]  # frozen; kept out of this module's parameters
        self.register_buffer("input_ids", input_ids, persistent=False)
        self.eos_token_id = eos_token_id
        with torch.no_grad():
            plain = text_encoder(input_ids.to(text_encoder.device))[0]
        self.register_buffer("plain", plain, persistent=False)

    def condition(self, task_index: torch.Tensor) -> torch.Tensor:
        """``E*(T_task)`` per row (``E(T_task)`` without feats)."""
        if self.feats is None:
            return self.plain[task_index]
        text_encoder = self._text_encoder[0]
        if self.feats.config.space == "output":
            from ..models.feat_embeddings import _substitute, feat_positions

            ids = self.input_ids[task_index]
            p0 = feat_positions(ids, self.eos_token_id, self.feats.config.num_vectors)
            return _substitute(self.plain[task_index], p0, self.feats.vectors[task_index])
        return encode_with_feats(
            text_encoder, self.input_ids[task_index], self.feats, task_index, self.eos_token_id
        )

    def forward(self, unet_input, timestep, task_index):
        cond = self.condition(task_index).to(self.unet.dtype)
        return self.unet(unet_input, timestep, encoder_hidden_states=cond).sample


class FaceANetTrainer(Trainer):
    """FaceA-Net's per-person tuning on the shared training layer."""

    log_keys = ("loss", "l_face", "l_attr", "attribute", "lr", "lr_embeddings")

    def __init__(self, config: FaceANetConfig):
        super().__init__(config, config.training, config.optim)
        self.cfg = config
        self._started = time.perf_counter()

    # ---- set-up -------------------------------------------------------------------------
    def resolve_identity(self) -> tuple[str, str, int]:
        """(base, gender, n): from the config, else from ``model.init_from``'s identity."""
        cfg = self.cfg
        prior = read_identity_meta(cfg.model.init_from) if cfg.model.init_from else {}
        base = cfg.model.base or prior.get("base") or DEFAULT_BASE
        if Path(base).is_dir():  # a local folder: recorded absolute, so the identity moves
            base = str(Path(base).resolve())
        gender = cfg.data.gender or prior.get("gender", "")
        if prior and gender != prior.get("gender"):
            raise InputError(
                f"data.gender: {gender} differs from the identity's {prior.get('gender')} "
                f"({cfg.model.init_from}); the prompts and n must stay the same"
            )
        n = cfg.model.num_vectors or prior.get("num_vectors") or DEFAULT_NUM_VECTORS[gender]
        return base, gender, int(n)

    def setup(self) -> None:
        from ..errors import ModelNotFoundError
        from ..pipelines.faceanet_parts import load_inpaint_components

        cfg, acc = self.cfg, self.accelerator
        cfg.check_inputs()
        self.base, self.gender, self.n = self.resolve_identity()
        # the photos first: a photo without a face or of another person fails before any model
        images, masks, crops = prepare_crops(cfg.data, self.device)
        try:
            parts = load_inpaint_components(self.base, cfg.model.seed)
        except ModelNotFoundError as exc:
            given = "given" if cfg.model.base else "the default"
            raise ModelNotFoundError(
                f"--base (model.base, {given}): {exc}; pass --base with an SD-inpainting "
                "diffusers folder or Hub id"
            ) from None
        self.vae, self.text_encoder = parts["vae"], parts["text_encoder"]
        self.tokenizer, self.scheduler = parts["tokenizer"], parts["scheduler"]
        from diffusers import DDPMScheduler

        self.train_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        self.alphas_cumprod = self.train_scheduler.alphas_cumprod.to(self.device)
        unet = parts["unet"]
        for module in (self.vae, self.text_encoder, unet):
            module.requires_grad_(False).eval().to(self.device)
        feats = None
        if cfg.model.init_from:
            feats, _ = load_identity(cfg.model.init_from, unet, ADAPTER)
            for name, p in unet.named_parameters():
                p.requires_grad_("lora_" in name)
        else:
            add_lora(unet, cfg.model.lora_rank, cfg.model.lora_alpha, cfg.model.lora_targets)
            if cfg.model.use_embeddings:
                feats = FeatEmbeddings(
                    tasks=TASKS,
                    num_vectors=self.n,
                    dim=self.text_encoder.config.hidden_size,
                    space=cfg.model.feat_space,
                ).to(self.device)
                feats.initialize(self.text_encoder, self.tokenizer, self.gender)
        if feats is not None:
            feats.to(self.device).requires_grad_(True)
        if cfg.training.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        ids = tokenize(self.tokenizer, [task_prompt(self.gender, t) for t in TASKS])
        model = FaceANetTunable(
            unet, self.text_encoder, ids.to(self.device), self.tokenizer.eos_token_id, feats
        ).to(self.device)
        self.crops = crops
        repeats = max(1, -(-cfg.training.batch_size * acc.num_processes // len(images)))
        self.dataset = PhotoCrops(images, masks, repeats, cfg.data.random_flip, cfg.training.seed)
        self.collate = collate
        lora_params = [p for n, p in unet.named_parameters() if p.requires_grad]
        groups = [
            {"params": lora_params, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay}
        ]
        if feats is not None:
            groups.append(
                {
                    "params": [feats.vectors],
                    "lr": cfg.tuning.lr_embeddings,
                    "weight_decay": cfg.tuning.weight_decay_embeddings,
                }
            )
        optimizer, lr_scheduler = self.make_optimizer(groups)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(model, optimizer, lr_scheduler)

    def trainable(self) -> dict[str, nn.Module]:
        model = self.accelerator.unwrap_model(self.model)
        return {
            "model": ParameterView([(n, p) for n, p in model.named_parameters() if p.requires_grad])
        }

    # ---- the objective ------------------------------------------------------------------
    def draw_attributes(self, bsz: int, generator: torch.Generator) -> torch.Tensor:
        """Task indices of the local term: one attribute per step (or per sample), uniform."""
        tune = self.cfg.tuning
        if tune.attribute:
            return torch.full((bsz,), TASKS.index(tune.attribute), dtype=torch.long)
        count = 1 if tune.attribute_sampling == "step" else bsz
        v = torch.randint(0, len(ATTRIBUTES), (count,), generator=generator) + 1
        return v.expand(bsz).clone() if count == 1 else v

    def task_term(
        self,
        images: torch.Tensor,
        z0: torch.Tensor,
        mask: torch.Tensor,
        task_index: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One reconstruction task: fresh t and eps; returns (eps_hat, eps, latent mask)."""
        from diffusers.utils.torch_utils import randn_tensor

        bsz = z0.shape[0]
        noise = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (bsz,), generator=generator
        ).to(z0.device)
        z_t = add_noise(z0, noise, alpha_bar(self.alphas_cumprod, t, z0))
        with torch.no_grad():
            masked = self.vae.encode(masked_image(images, mask)).latent_dist.mode()
            masked = masked * self.vae.config.scaling_factor
        unet_in = inpaint_unet_input(z_t, mask, masked)
        eps_hat = self.model(unet_in, t, task_index.to(z0.device))
        return eps_hat, noise, unet_in[:, 4:5]

    def compute_loss(
        self, batch: dict[str, Any], generator: torch.Generator, backward: bool = False
    ) -> dict[str, torch.Tensor]:
        """Eq. 2 for one batch; the draws come from ``generator`` in a fixed order.

        ``backward=True`` back-propagates each task's term (:func:`attribute_term`) right after
        its forward, so only one task's graph is alive at a time. ``L_A`` is the sum of the
        terms, so the accumulated gradient equals one backward of ``L_A`` (returned detached).
        """
        tune = self.cfg.tuning
        images = batch["image"].to(self.device)
        masks = batch["masks"].to(self.device)  # (B, 5, 1, H, W)
        bsz = images.shape[0]
        with torch.no_grad():
            sf = self.vae.config.scaling_factor
            z0 = self.vae.encode(images).latent_dist.sample(generator=generator) * sf
        attr = self.draw_attributes(bsz, generator)
        plan = []
        if tune.tasks in ("both", "global"):
            plan.append(("l_face", masks[:, 0], torch.zeros(bsz, dtype=torch.long)))
        if tune.tasks in ("both", "local"):
            plan.append(("l_attr", masks[torch.arange(bsz), attr.to(self.device)], attr))
        zero = torch.zeros((), device=self.device)
        out = {"l_face": zero, "l_attr": zero}
        for k, (key, mask, task_index) in enumerate(plan):
            # several processes: only the last task's backward syncs the (summed) gradients
            early = backward and k < len(plan) - 1
            sync = self.accelerator.no_sync(self.model) if early else contextlib.nullcontext()
            with sync:
                eps_hat, eps, m = self.task_term(images, z0, mask, task_index, generator)
                term = attribute_term(eps_hat, eps, m if tune.mask_weighted else None)
                if backward:
                    self.accelerator.backward(term)
                    term = term.detach()
            out[key] = term
        out["loss"] = out["l_face"] + out["l_attr"]
        out["attribute"] = attr.float().mean()
        return out

    def training_step(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, float]:
        per_task = self.cfg.tuning.backward_per_task
        with self.accelerator.accumulate(self.model):
            terms = self.compute_loss(batch, generator, backward=per_task)
            loss = None if per_task else terms["loss"]
            self.clip_and_step(loss, self.model, self.optimizer, self.lr_scheduler)
        logs = {k: float(v.detach()) for k, v in terms.items()}
        lrs = self.lr_scheduler.get_last_lr()
        if len(lrs) > 1:
            logs["lr_embeddings"] = lrs[1]
        return logs

    # ---- validation and export ----------------------------------------------------------
    def identity_meta(self) -> dict[str, Any]:
        cfg = self.cfg
        prior = read_identity_meta(cfg.model.init_from) if cfg.model.init_from else {}
        ratios = [c.face_ratio for c in self.crops]
        history = list(prior.get("history", []))
        history.append(
            {
                "images": list(cfg.data.images),
                "steps": cfg.training.max_steps,
                "tasks": cfg.tuning.tasks,
                "attribute": cfg.tuning.attribute or None,
            }
        )
        return {
            "method": "faceanet",
            "gender": self.gender,
            "noun": self.gender,
            "num_vectors": self.n,
            "base": self.base,
            "steps": int(prior.get("steps", 0)) + cfg.training.max_steps,
            "feat_space": cfg.model.feat_space if self.feats_module() is not None else None,
            "use_embeddings": self.feats_module() is not None,
            "tasks": list(TASKS),
            "left_right": "the subject's own (iBUG): left_eye is on the image's right",
            "lora_rank": prior.get("lora_rank", cfg.model.lora_rank),
            "lora_alpha": prior.get("lora_alpha", cfg.model.lora_alpha),
            "lora_targets": prior.get("lora_targets", list(cfg.model.lora_targets)),
            "resolution": cfg.data.resolution,
            "crop_scale": cfg.data.crop_scale,
            # the identity's face/crop ratio: an attribute swap tunes on another person's
            # photos but still repaints this identity's face, so its ratio is kept
            "face_ratio": float(prior.get("face_ratio", np.median(ratios))),
            "mask_shape": cfg.data.mask_shape,
            "mask_source": cfg.data.mask_source,
            "mask_dilate": cfg.data.mask_dilate,
            "tuning_seconds": round(time.perf_counter() - self._started, 2),
            "history": history,
        }

    def feats_module(self) -> FeatEmbeddings | None:
        return self.accelerator.unwrap_model(self.model).feats

    def pipeline(self):
        """A :class:`FaceANetPipeline` on the current weights (for validation)."""
        from ..pipelines.faceanet import FaceANetPipeline

        model = self.accelerator.unwrap_model(self.model)
        pipe = FaceANetPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=model.unet,
            scheduler=self.scheduler,
        )
        pipe.set_identity(model.feats, self.identity_meta())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(self, step: int) -> dict[str, float]:
        from PIL import Image

        from ..writer import save_image
        from .validation import contact_grid

        if not self.accelerator.is_main_process:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        model.unet.eval()
        try:
            v = self.cfg.validation
            pipe = self.pipeline()
            crop = self.crops[0]
            rows = []
            for prompt in v.prompts:
                text = prompt.format(noun=self.gender)
                out = pipe(
                    text,
                    context_image=crop.image,
                    id_prompt=text,
                    num_inference_steps=v.steps,
                    guidance_scale=v.guidance_scale,
                    generator=torch.Generator().manual_seed(v.seed),
                    landmarks68=crop.landmarks68,
                )
                pair = [crop.image, out.images[0]]
                if crop.image.width < 192:  # small tuning crops: enlarge for the grid
                    pair = [im.resize((192, 192), Image.Resampling.NEAREST) for im in pair]
                rows.append((pair[0], pair[1], text))
            save_image(contact_grid(rows), self.run_dir / "validation" / f"step-{step:06d}.png")
        finally:
            model.unet.train()
        return {}

    def export(self, folder: Path) -> None:
        import copy

        model = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:
            model = copy.deepcopy(model)
            self.ema.copy_to(model)
        meta = self.identity_meta()
        save_identity(folder, model.unet, model.feats, meta)
        self.accelerator.print(
            f"FaceA-Net: tuned {meta['gender']} identity in {meta['tuning_seconds']:.1f} s "
            f"({self.cfg.training.max_steps} steps)"
        )
