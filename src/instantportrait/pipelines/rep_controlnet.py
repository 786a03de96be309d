"""RepControlNetPipeline: portraits with a merged RepControlNet (FPGA §5).

The UNet is a plain ``UNet2DConditionModel`` of the base's shapes (the copies were folded in
by :meth:`~..models.rep_controlnet.RepControlNet.merge`); the pipeline applies the only two
additions: the :class:`~..models.rep_controlnet.ConditionAdapter`, computed once per image
and added at the UNet's first layer, and the decoupled ID attention
(:class:`~..models.rep_controlnet.IDProjections`) fed with F_id -- one identity, or several
with one face-region mask each, exactly as FPGA's ID-ControlNet (the same multi-ID processor).
DDIM, CFG with the unconditional branch keeping the condition image and F_id (spec §7).

F_id comes from face images through the optional identity encoder (``resampler`` +
``image_encoder`` + the face embedder named in the config: the FPGA encoder the model was
trained with), or is passed as ``id_embeds``.

The control strength beta of Eq. 6 is chosen when merging; a folder that also holds
``rep_branches.safetensors`` (the trained copies Theta_m, written by ``train repcontrolnet``)
can be re-merged to another beta when loaded: :meth:`RepControlNetPipeline.set_control_strength`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..errors import InputError, ModelNotFoundError
from ..io import check_prompt, load_image
from ..models.rep_controlnet import (  # noqa: F401  (diffusers finds components by import)
    ConditionAdapter,
    IDProjections,
    adapter_injection,
    set_id_processors,
)
from ..models.resampler import IDResampler  # noqa: F401
from ..multi_id_attention import set_id_scale
from ..writer import atomic_directory
from .edit import tensor_to_images
from .id_encoding import IDEncodingMixin
from .restore import control_to_tensor
from .step_callbacks import StepCallback, StepCallbackMixin, rows_for
from .vae_latents import decode_latents, vae_scale_factor

__all__ = ["BRANCHES_FILE", "RepControlNetPipeline", "RepControlNetPipelineOutput"]

#: The trained copies Theta_m (and the merge's alpha/beta in its metadata), beside the pipeline.
BRANCHES_FILE = "rep_branches.safetensors"


class RepControlNetPipelineOutput(BaseOutput):
    images: Any


class RepControlNetPipeline(IDEncodingMixin, StepCallbackMixin, DiffusionPipeline):
    """Generate with a merged RepControlNet UNet, its condition adapter and ID projections.

    Args:
        vae, text_encoder, tokenizer: the frozen SD1.5 parts.
        unet: the merged ``UNet2DConditionModel`` (the base's shapes).
        adapter: the :class:`~..models.rep_controlnet.ConditionAdapter`.
        id_projections: the :class:`~..models.rep_controlnet.IDProjections` (``None``: a model
            trained without the ID attention).
        scheduler: DDIM.
        resampler / image_encoder: the optional identity encoder (FPGA's); without them pass
            ``id_embeds``.
        face_embedder / face_embedder_weights: the recognition network of F_id.
        default_steps / default_guidance_scale: 30 / 5 (FPGA's sampling).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->resampler->adapter->unet->vae"
    _optional_components = ["id_projections", "resampler", "image_encoder"]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        adapter,
        id_projections,
        scheduler,
        resampler=None,
        image_encoder=None,
        face_embedder: str = "arcface",
        face_embedder_weights: str | None = None,
        default_steps: int = 30,
        default_guidance_scale: float = 5.0,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            adapter=adapter,
            id_projections=id_projections,
            scheduler=scheduler,
            resampler=resampler,
            image_encoder=image_encoder,
        )
        self.register_identity_config(
            face_embedder, face_embedder_weights, default_steps, default_guidance_scale
        )
        if id_projections is not None and unet is not None:
            set_id_processors(unet, id_projections)
        self.vae_scale_factor = vae_scale_factor(vae)
        self._source: Path | None = None
        self._beta_shift = 0.0  # beta now minus the folder's beta (set_control_strength)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any):
        """diffusers' loading; remembers the folder (for :meth:`set_control_strength`)."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if Path(pretrained_model_name_or_path).is_dir():
            pipe._source = Path(pretrained_model_name_or_path)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        kwargs.setdefault("safe_serialization", True)
        with atomic_directory(save_directory, overwrite=True) as tmp:
            super().save_pretrained(tmp, **kwargs)

    @property
    def has_identity(self) -> bool:
        """Whether the merged model has the decoupled ID attention (trained with F_id)."""
        return self.id_projections is not None and len(self.id_projections.to_k) > 0

    # ------------------------------------------------------------------ control strength
    @torch.no_grad()
    def set_control_strength(self, beta: float, branches: str | os.PathLike | None = None):
        """Re-merge with ``Theta' = alpha Theta + beta Theta_m`` (FPGA Eq. 6) for a new beta.

        The folder's merge used (alpha, beta0) (recorded in ``rep_branches.safetensors``);
        ``alpha Theta + beta Theta_m = Theta'_0 + (beta - beta0) Theta_m``, so only the copies
        are needed, not the base. ``branches``: that file (default: beside the loaded folder).
        Returns ``self``.
        """
        from safetensors import safe_open

        path = Path(branches) if branches else (self._source or Path()) / BRANCHES_FILE
        if not path.is_file():
            raise ModelNotFoundError(
                f"control strength: {path} not found; it is written by `train repcontrolnet` "
                "beside the merged pipeline (or merge again with merge.beta)"
            )
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "merge" not in meta:
                raise InputError(f"{path}: no merge metadata (alpha, beta); not a {BRANCHES_FILE}")
            beta0 = float(json.loads(meta["merge"])["beta"])
            delta = float(beta) - beta0 - self._beta_shift
            params = dict(self.unet.named_parameters())
            for key in f.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                if not key.startswith("unet.") or ".branch." not in key:
                    continue
                name = key[len("unet.") :].replace(".branch.", ".")
                if name not in params:
                    raise InputError(f"{path}: {key} has no weight {name} in the merged UNet")
                p = params[name]
                p.add_(f.get_tensor(key).to(p.device, p.dtype), alpha=delta)
        self._beta_shift = float(beta) - beta0
        return self

    # ------------------------------------------------------------------ generation
    def encode_text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        from ..text import encode_prompts

        dtype = (self.unet or self.text_encoder).dtype  # a text-encoder-only pipeline too
        return encode_prompts(self.tokenizer, self.text_encoder, texts, device, dtype)

    def check_inputs(self, prompt, image, id_embeds, id_images, id_masks, height, width, steps):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise InputError("prompt: at least one prompt is required")
        prompts = [check_prompt(p, self.tokenizer, name="prompt") for p in prompts]
        if image is None:
            raise InputError("image: the condition image (skeleton and/or landmarks) is required")
        if id_embeds is not None and id_images is not None:
            raise InputError("give id_images or id_embeds, not both")
        k = 0
        if id_embeds is not None:
            k = 1 if id_embeds.ndim == 2 else id_embeds.shape[0]
        elif id_images is not None:
            k = len(id_images)
        if k and not self.has_identity:
            raise InputError(
                "id images: this RepControlNet was trained without the ID attention (id_dim=0)"
            )
        if k > 1 and id_masks is None:
            raise InputError(f"id_masks: {k} identities need one face-region mask each")
        if id_masks is not None and len(id_masks) != max(k, 1):
            raise InputError(f"id_masks: {len(id_masks)} masks for {max(k, 1)} identities")
        for name, v in (("height", height), ("width", width)):
            if v is not None and (v < self.vae_scale_factor or v % self.vae_scale_factor):
                raise InputError(f"{name}: a positive multiple of {self.vae_scale_factor}, got {v}")
        if steps is not None and steps < 1:
            raise InputError("num_inference_steps: must be at least 1")
        return prompts, k

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: Any,
        id_images: Sequence[Any] | None = None,
        id_embeds: torch.Tensor | None = None,
        id_masks: Any = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        num_images_per_prompt: int = 1,
        adapter_scale: float = 1.0,
        id_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        """Images for ``prompt`` under the condition ``image`` (skeleton/landmarks, RGB).

        Args:
            id_images / id_embeds: K face images, or F_id ``(K, T, D)`` (``(T, D)``: one).
            id_masks: K face-region masks ``(K, H, W)`` in [0, 1] (needed for K > 1).
            height / width: output size (default the condition image's, snapped to 8).
            adapter_scale: scales the adapter's residual (the merge's beta scales the copies:
                :meth:`set_control_strength`).
            id_scale: weight of the ID term.
            num_images_per_prompt / generator / latents / output_type / return_dict: as in
                diffusers' pipelines (``return_dict=False`` gives ``(images,)``).
            callback_on_step_end / callback_on_step_end_tensor_inputs: as in diffusers
                (:mod:`~instantportrait.pipelines.step_callbacks`): ``latents`` and
                ``prompt_embeds`` (``[negative; prompt]`` rows while guided).
        """
        prompts, k = self.check_inputs(
            prompt, image, id_embeds, id_images, id_masks, height, width, num_inference_steps
        )
        names = self.callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        if num_images_per_prompt < 1:
            raise InputError("num_images_per_prompt: must be at least 1")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        steps = num_inference_steps or self.config.default_steps
        scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        f = self.vae_scale_factor
        cond_img = load_image(image, name="image")
        w = width or max(f, cond_img.width // f * f)
        h = height or max(f, cond_img.height // f * f)
        cond_img = cond_img.resize((w, h), Image.BILINEAR)
        n = len(prompts)
        device, dtype = self._execution_device, self.unet.dtype
        text = self.encode_text(prompts, device)
        self._guidance_scale = float(scale)
        if self.do_classifier_free_guidance:
            text = torch.cat([self.encode_text([negative_prompt] * n, device), text])
        cond = control_to_tensor(cond_img).to(device, dtype)
        residual = self.adapter(cond) * adapter_scale  # once per image
        kwargs = None
        if self.has_identity:
            if id_embeds is None and id_images is not None:
                id_embeds = self.encode_identity(list(id_images))
            kwargs = {"id_embeds": None}
            if id_embeds is not None:
                ids = id_embeds.to(device, dtype)
                ids = ids.unsqueeze(0) if ids.ndim == 2 else ids  # (K, T, D)
                kwargs["id_embeds"] = ids.unsqueeze(0)  # rows follow the batch below
                if id_masks is not None:
                    m = torch.as_tensor(np.asarray(id_masks, dtype=np.float32))
                    kwargs["id_masks"] = m[None].to(device)
            set_id_scale(self.unet, id_scale)
        shape = (n, self.unet.config.in_channels, h // f, w // f)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        self.scheduler.set_timesteps(steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        with adapter_injection(self.unet, residual, self.adapter.config.inject_at):
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                # Read each step: a callback may turn guidance off (diffusers' CFG cutoff).
                cfg = self.do_classifier_free_guidance and text.shape[0] >= 2 * n
                z = torch.cat([latents, latents]) if cfg else latents
                z = self.scheduler.scale_model_input(z, t)
                step_kwargs = kwargs
                if kwargs is not None and kwargs["id_embeds"] is not None:
                    ids = kwargs["id_embeds"].expand(z.shape[0], -1, -1, -1)
                    step_kwargs = {**kwargs, "id_embeds": ids}
                ctx = rows_for(text, z.shape[0])
                eps = self.unet(z, t, ctx, cross_attention_kwargs=step_kwargs).sample
                if cfg:
                    e_u, e_c = eps.chunk(2)
                    eps = e_u + self.guidance_scale * (e_c - e_u)
                latents = self.scheduler.step(eps, t, latents).prev_sample
                if names:
                    state = self.run_step_callback(
                        callback_on_step_end,
                        names,
                        i,
                        t,
                        {"latents": latents, "prompt_embeds": text},
                    )
                    latents, text = state["latents"], state["prompt_embeds"]
        self.maybe_free_model_hooks()
        if output_type == "latent":
            images = latents
        else:
            decoded = decode_latents(self.vae, latents)
            images = tensor_to_images(decoded.clamp(-1, 1), output_type)
        if not return_dict:
            return (images,)
        return RepControlNetPipelineOutput(images=images)


def merged_pipeline(
    rep: Any,
    parts: dict[str, Any],
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    identity: dict[str, Any] | None = None,
) -> RepControlNetPipeline:
    """The :class:`RepControlNetPipeline` of a trained two-branch ``rep`` (Eq. 6 with alpha,
    beta), with ``parts``' vae, text encoder, tokenizer and scheduler and, optionally, the
    identity encoder ``identity`` (:func:`~.id_encoding.load_identity_encoder`)."""
    import copy

    merged = rep.merge(alpha, beta)
    return RepControlNetPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=merged,
        adapter=copy.deepcopy(rep.adapter),
        id_projections=copy.deepcopy(rep.id_projections) if len(rep.id_projections.to_k) else None,
        scheduler=parts["scheduler"],
        **(identity or {}),
    )


def save_merged(
    pipe: RepControlNetPipeline, rep: Any, folder: str | os.PathLike, alpha: float, beta: float
) -> None:
    """Write the merged pipeline and, beside it, :data:`BRANCHES_FILE`: the copies Theta_m and
    the adapter, with the merge's (alpha, beta) in its metadata (to re-merge another beta)."""
    from safetensors.torch import save_file

    from ..writer import atomic_write

    folder = Path(folder)
    pipe.save_pretrained(folder)
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in rep.state_dict().items()
        if ".branch." in k or k.startswith("adapter.")
    }
    meta = {"merge": json.dumps({"alpha": float(alpha), "beta": float(beta)})}
    atomic_write(folder / BRANCHES_FILE, lambda p: save_file(state, str(p), metadata=meta))


def write_tiny_repcontrolnet(directory: str | os.PathLike, *, seed: int = 0) -> None:
    """``init-tiny --kind repcontrolnet``: a merged tiny RepControlNet with FPGA's tiny identity
    encoder (dlib's real recognition weights), for ``generate --method fpga`` and the harness.

    The copies get a seeded perturbation (as after some training), so beta matters.
    """
    from ..models.rep_controlnet import RepControlNet, RepLayer
    from .fpga import fpga_components

    parts = fpga_components("tiny", seed=seed)
    rep = RepControlNet(
        parts["unet"],
        adapter_channels=(8, 8, 16, 16),
        id_dim=parts["resampler"].config.cross_attention_dim,
    )
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in rep.unet.modules():
            if isinstance(m, RepLayer):
                for prm in m.branch.parameters():
                    prm.add_(torch.randn(prm.shape, generator=g) * prm.std().nan_to_num(0) * 0.5)
        for prm in rep.adapter.conv_out.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.05)
    identity = {
        "resampler": parts["resampler"],
        "image_encoder": parts["image_encoder"],
        "face_embedder": parts["face_embedder"],
    }
    pipe = merged_pipeline(rep, parts, identity=identity)
    save_merged(pipe, rep, directory, 1.0, 1.0)
