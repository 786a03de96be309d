"""The models of pair generation (App. B.2) and how they are loaded, in turn or together.

* **target model**: a text-to-image SDXL checkpoint (``StableDiffusionXLPipeline``), no
  adapters, drawing the target from the target prompt. A few-step model (SDXL-Turbo,
  Lightning, Hyper, LCM) is a valid choice: set the steps and guidance to its own.
* **input model**: an SDXL checkpoint with a canny ControlNet
  (``StableDiffusionXLControlNetPipeline``) and an IP-Adapter loaded through diffusers'
  ``load_ip_adapter`` (its CLIP image encoder included), drawing the input from the identity
  prompt, the target's edges and the target itself as the image prompt.

Every model is a local diffusers folder or a Hub id. ``init-tiny --kind dataset`` writes a
bundle (``bundle.json`` naming the parts) that ``data generate --models DIR`` reads.

Memory: in fp32 SDXL's UNet is 10.3 GB, its text encoders 3.3 GB, a canny ControlNet 5 GB and
the ViT-H image encoder 2.5 GB: about 35 GB with both pipelines resident. ``in-turn`` (the
default) loads the target pipeline, draws every target of a shard, frees it, then loads the
input pipeline for the shard's inputs: the peak is the input pipeline alone (~21 GB fp32,
~11 GB in half precision), paid back with one load of each pipeline per shard (amortised over
``--shard-size`` pairs). ``together`` keeps both (a large GPU). ``model-offload`` keeps both
in CPU memory and moves one model at a time to the GPU (diffusers' model CPU offload, CUDA
only): the GPU peak is the largest single model (the UNet).
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..devices import diffusers_dtype
from ..errors import InputError, ModelNotFoundError
from .pair_drawing import Backend, GenerationSettings

MEMORY_MODES = ("in-turn", "together", "model-offload")
BUNDLE_FILE = "bundle.json"

#: diffusers' SDXL scheduler configuration (Euler, SD's scaled-linear betas, leading spacing).


TINY_IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}

#: laion/CLIP-ViT-H-14 vision tower: the image encoder of h94/IP-Adapter's SDXL ViT-H models.
VIT_H_IMAGE_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}


@dataclass(frozen=True)
class ModelPaths:
    """Where each model lives (local folder or Hub id)."""

    target_model: str
    input_model: str
    controlnet: str
    ip_adapter: str
    ip_adapter_subfolder: str = ""
    ip_adapter_weight: str = "ip-adapter_sdxl.safetensors"
    image_encoder_folder: str = "image_encoder"

    @classmethod
    def from_bundle(cls, directory: str | os.PathLike) -> ModelPaths:
        """The paths named by a bundle's ``bundle.json`` (relative to the bundle)."""
        root = Path(directory)
        spec_file = root / BUNDLE_FILE
        if not spec_file.is_file():
            raise ModelNotFoundError(
                f"{root}: no {BUNDLE_FILE} (write a tiny bundle with `instantportrait init-tiny "
                "DIR --kind dataset`, or name the models with --target-model, --input-model, "
                "--controlnet and --ip-adapter)"
            )
        try:
            spec = json.loads(spec_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{spec_file}: not JSON ({exc.msg})") from None
        fields = {f for f in cls.__dataclass_fields__}
        unknown = set(spec) - fields
        if unknown:
            raise InputError(f"{spec_file}: unknown keys {', '.join(sorted(unknown))}")
        for key in ("target_model", "input_model", "controlnet", "ip_adapter"):
            if key not in spec:
                raise InputError(f"{spec_file}: missing {key!r}")
            spec[key] = str(root / spec[key]) if (root / spec[key]).exists() else spec[key]
        return cls(**spec)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def check(self) -> None:
        """Refuse up front (before any output is written) a local model that is not there.

        A local folder must hold what its loader reads; a name that is not a local path is a
        Hub id and is left to the loader.
        """
        wanted = (
            ("--target-model", self.target_model, "model_index.json"),
            ("--input-model", self.input_model, "model_index.json"),
            ("--controlnet", self.controlnet, "config.json"),
            (
                "--ip-adapter",
                self.ip_adapter,
                str(Path(self.ip_adapter_subfolder) / self.ip_adapter_weight),
            ),
        )
        for flag, where, needed in wanted:
            path = Path(where).expanduser()
            looks_local = path.exists() or where.startswith(("/", ".", "~")) or where.count("/") > 1
            if not looks_local:
                continue
            if not (path / needed).is_file():
                raise ModelNotFoundError(
                    f"{flag} {where}: no {needed} there (pass a diffusers folder or a Hub id; "
                    "`init-tiny DIR --kind dataset` writes a tiny bundle for --models DIR)"
                )


def _load(fn, what: str, where: str, flag: str):
    try:
        return fn()
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(
            f"{flag} {where}: could not load the {what} ({first}); pass a diffusers folder or "
            "a Hub id (or `init-tiny DIR --kind dataset` and --models DIR for a tiny bundle)"
        ) from None


def load_target_pipeline(paths: ModelPaths, device: Any, dtype: torch.dtype):
    """The target model: ``StableDiffusionXLPipeline``, no adapters."""
    from diffusers import StableDiffusionXLPipeline

    pipe = _load(
        lambda: StableDiffusionXLPipeline.from_pretrained(
            paths.target_model, **diffusers_dtype(dtype)
        ),
        "target SDXL pipeline",
        paths.target_model,
        "--target-model",
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


def load_input_pipeline(paths: ModelPaths, device: Any, dtype: torch.dtype, ip_scale: float):
    """The input model: SDXL + canny ControlNet + IP-Adapter (with its image encoder)."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    controlnet = _load(
        lambda: ControlNetModel.from_pretrained(paths.controlnet, **diffusers_dtype(dtype)),
        "canny ControlNet",
        paths.controlnet,
        "--controlnet",
    )
    pipe = _load(
        lambda: StableDiffusionXLControlNetPipeline.from_pretrained(
            paths.input_model, controlnet=controlnet, **diffusers_dtype(dtype)
        ),
        "input SDXL pipeline",
        paths.input_model,
        "--input-model",
    )
    _load(
        lambda: pipe.load_ip_adapter(
            paths.ip_adapter,
            subfolder=paths.ip_adapter_subfolder,
            weight_name=paths.ip_adapter_weight,
            image_encoder_folder=paths.image_encoder_folder,
        ),
        "IP-Adapter",
        paths.ip_adapter,
        "--ip-adapter",
    )
    pipe.set_ip_adapter_scale(ip_scale)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


def release_memory() -> None:
    """Collect freed pipelines now (they hold reference cycles) and return CUDA's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PipelineCache:
    """Hands out the target and input pipelines under a memory mode (see the module doc).

    ``with cache.use("target") as pipe:`` loads on entry when needed; in ``in-turn`` the
    pipeline is freed on exit, so the next phase starts from free memory.
    """

    def __init__(
        self,
        paths: ModelPaths,
        device: Any = "cpu",
        dtype: torch.dtype = torch.float32,
        memory: str = "in-turn",
        ip_adapter_scale: float = 0.6,
    ):
        if memory not in MEMORY_MODES:
            raise InputError(f"--memory: one of {', '.join(MEMORY_MODES)}, got {memory!r}")
        self.device = torch.device(device)
        if memory == "model-offload" and self.device.type != "cuda":
            raise InputError("--memory model-offload: needs a CUDA device (use in-turn on CPU)")
        self.paths, self.dtype, self.memory = paths, dtype, memory
        self.ip_adapter_scale = ip_adapter_scale
        self._pipes: dict[str, Any] = {}
        self.load_seconds = 0.0

    def _load(self, which: str):
        import time

        start = time.perf_counter()
        device = None if self.memory == "model-offload" else self.device
        if which == "target":
            pipe = load_target_pipeline(self.paths, device, self.dtype)
        else:
            pipe = load_input_pipeline(self.paths, device, self.dtype, self.ip_adapter_scale)
        if self.memory == "model-offload":
            pipe.enable_model_cpu_offload(device=self.device)
        self.load_seconds += time.perf_counter() - start
        return pipe

    @contextmanager
    def use(self, which: str) -> Iterator[Any]:
        if which not in self._pipes:
            self._pipes[which] = self._load(which)
        try:
            yield self._pipes[which]
        finally:
            if self.memory == "in-turn":
                self._pipes.pop(which)
                release_memory()


def _tiny_sdxl(seed: int):
    """A tiny SDXL text-to-image pipeline (random weights, SDXL's real structure): the one
    tiny SDXL of the toolkit (``init-tiny --kind sdxl``)."""
    from diffusers import StableDiffusionXLPipeline

    from ..pipelines.fastface_tiny import build_tiny_sdxl

    return StableDiffusionXLPipeline(**build_tiny_sdxl(seed))


def ip_adapter_state_dict(
    unet: Any, image_embed_dim: int, *, seed: int = 0, std: float = 0.02
) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights for ``unet`` in the original file layout.

    ``image_proj.*``: the projection of a CLIP image embedding to 4 tokens
    (``proj`` ``(4 * cross_dim, image_embed_dim)`` and a LayerNorm); ``ip_adapter.K.to_k_ip``
    / ``to_v_ip`` for the K-th attention processor of the UNet (odd K: the cross-attentions,
    in ``unet.attn_processors`` order), each ``(hidden, cross_dim)``: the layout diffusers'
    ``load_ip_adapter`` converts.
    """
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    sd: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(4 * cross, image_embed_dim, generator=gen) * std,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        module = unet.get_submodule(name[: -len(".processor")])
        hidden = module.to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):
            sd[f"ip_adapter.{key}.{part}.weight"] = torch.randn(hidden, cross, generator=gen) * std
        key += 2
    return sd


def write_ip_adapter(
    directory: Path, unet: Any, image_encoder: Any, *, seed: int = 0, weight_name: str
) -> None:
    """An IP-Adapter folder: the adapter's safetensors file and ``image_encoder/``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    sd = ip_adapter_state_dict(unet, image_encoder.config.projection_dim, seed=seed)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / weight_name))
    image_encoder.save_pretrained(directory / "image_encoder")


def write_tiny_dataset(directory: Path, *, seed: int = 0) -> None:
    """``init-tiny --kind dataset``: tiny SDXL, canny ControlNet and IP-Adapter for
    ``data generate --models DIR`` (one SDXL serves as target and input model)."""
    from diffusers import ControlNetModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..components import _seeded

    directory = Path(directory)
    sdxl = _tiny_sdxl(seed)
    sdxl.save_pretrained(directory / "sdxl")
    with _seeded(seed + 1):
        ControlNetModel.from_unet(sdxl.unet).save_pretrained(directory / "controlnet_canny")
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_IMAGE_ENCODER_CONFIG))
    weight = "ip-adapter_sdxl.safetensors"
    write_ip_adapter(directory / "ip_adapter", sdxl.unet, encoder, seed=seed, weight_name=weight)
    spec = {
        "target_model": "sdxl",
        "input_model": "sdxl",
        "controlnet": "controlnet_canny",
        "ip_adapter": "ip_adapter",
        "ip_adapter_weight": weight,
    }
    (directory / BUNDLE_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def run_target(pipe: Any, prompts: list[str], generators: list, settings: Any) -> list[Image.Image]:
    """Targets from target prompts (the plain SDXL pipeline)."""
    negative = [settings.negative_prompt] * len(prompts) if settings.negative_prompt else None
    out = pipe(
        prompt=prompts,
        negative_prompt=negative,
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.target_steps,
        guidance_scale=settings.target_guidance,
        generator=generators,
    )
    return list(out.images)


def run_input(
    pipe: Any,
    prompts: list[str],
    targets: list[Image.Image],
    edges: list[Image.Image],
    generators: list,
    settings: Any,
) -> list[Image.Image]:
    """Inputs from identity prompts, the targets' edges (ControlNet) and the targets
    (IP-Adapter image prompt, one per row: embeddings of shape ``(B, 1, D)``)."""
    cfg = settings.input_guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
    with torch.no_grad():
        pos, neg = pipe.encode_image(targets, pipe._execution_device, 1, False)
    embeds = torch.cat([neg[:, None], pos[:, None]]) if cfg else pos[:, None]
    negative = [settings.negative_prompt] * len(prompts) if settings.negative_prompt else None
    out = pipe(
        prompt=prompts,
        negative_prompt=negative,
        image=edges,
        ip_adapter_image_embeds=[embeds],
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.input_steps,
        guidance_scale=settings.input_guidance,
        controlnet_conditioning_scale=settings.controlnet_scale,
        generator=generators,
    )
    return list(out.images)


class DiffusersBackend(Backend):
    """The SDXL pipelines of :mod:`.models` under a memory mode."""

    def __init__(
        self,
        paths,
        settings: GenerationSettings,
        device="cpu",
        dtype=torch.float32,
        memory: str = "in-turn",
    ):
        self.settings = settings
        self.cache = PipelineCache(paths, device, dtype, memory, settings.ip_adapter_scale)
        self.device = self.cache.device
        self._pipe = None

    @property
    def load_seconds(self) -> float:  # type: ignore[override]
        return self.cache.load_seconds

    def phase(self, name: str):
        from contextlib import contextmanager

        @contextmanager
        def bracket():
            with self.cache.use(name) as pipe:
                self._pipe = pipe
                del pipe  # the cache holds the only reference: in-turn can free it
                try:
                    yield
                finally:
                    self._pipe = None

        return bracket()

    def targets(self, rows, generators):
        return run_target(self._pipe, [r["target"] for r in rows], generators, self.settings)

    def inputs(self, rows, targets, edges, generators):
        prompts = [r["identity"] for r in rows]
        return run_input(self._pipe, prompts, targets, edges, generators, self.settings)
