"""The ``fastface`` method kind: FastFace (IP-Adapter FaceID-Plus-v2 on few-step SDXL).

SPEC: ``fastface[:MODEL][,key=value...]`` where MODEL is a family name (``hyper``,
``lightning``, ``lcm``, ``turbo``: SDXL base plus that family's weights) or a few-step SDXL
pipeline folder (default ``hyper``). Settings (the ``generate --method fastface`` options):

* ``model`` / ``family``: as ``--model`` / ``--family``;
* ``preset`` (default ``fastface-am1``), ``ip_adapter_scale`` (0.8), ``lora_scale`` (1.0),
  ``steps`` (4), ``resolution`` (the family's);
* ``face_model`` (required: insightface ``w600k_r50.onnx`` / ``glintr100.onnx`` or an
  arcface_torch file), ``base``, ``distilled``, ``ip_adapter``, ``image_encoder``: where the
  weights are (defaults: the Hub ids of :func:`~instantportrait.pipelines.fastface_loading.
  load_fastface`);
* ``dtype``.

The pipeline loads once (on the first item); the identity inputs are computed once per
subject from its first tuning photo (the identity image). Each item's seed seeds a CPU
generator, as ``generate --seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ...errors import InputError, ModelNotFoundError
from ..methods import Method, MethodSpec, check_model_path, model_fingerprint

__all__ = ["FastFaceMethod"]

_PATH_SETTINGS = ("face_model", "base", "distilled", "ip_adapter", "image_encoder")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FastFaceMethod(Method):
    """FastFace under evaluation (see the module docstring for its settings)."""

    options = (
        "model",
        "family",
        "preset",
        "ip_adapter_scale",
        "lora_scale",
        "steps",
        "resolution",
        "dtype",
        *_PATH_SETTINGS,
    )

    def __init__(self, spec: MethodSpec, device=None, dtype=None) -> None:
        super().__init__(spec, device, dtype)
        from ...pipelines.fastface_presets import FAMILIES, fastface_presets

        family_names, preset_names = tuple(FAMILIES), tuple(fastface_presets())
        if spec.path and spec.get("model") is not None:
            raise InputError(
                f"method {spec.text!r}: give the model once (fastface:MODEL or model=)"
            )
        self.model = str(spec.path or spec.get("model") or "hyper")
        family = spec.get("family")
        if family is not None and family not in family_names:
            raise InputError(f"method {spec.text!r}: family one of {', '.join(family_names)}")
        preset = str(spec.get("preset") or "fastface-am1")
        if preset not in preset_names and not Path(preset).is_file():
            raise InputError(
                f"method {spec.text!r}: preset one of {', '.join(preset_names)} or a JSON file"
            )
        for key in ("ip_adapter_scale", "lora_scale"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise InputError(f"method {spec.text!r}: {key} must be a number >= 0")
        for key in ("steps", "resolution"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"method {spec.text!r}: {key} must be a positive integer")
        if spec.get("dtype") is not None:
            if spec.get("dtype") not in DTYPES:
                raise InputError(f"method {spec.text!r}: dtype one of {', '.join(DTYPES)}")
            self.dtype = DTYPES[spec.get("dtype")]
        self.preset_name = preset
        self._pipe = None
        self._encoder = None
        self._identities: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._preset = self._read_preset()  # a bad preset file fails before any model runs

    # -- settings ---------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Denoising steps (default 4)."""
        return int(self.spec.get("steps") or 4)

    @property
    def ip_adapter_scale(self) -> float:
        """The adapter's strength λ (default 0.8, the paper's tables)."""
        value = self.spec.get("ip_adapter_scale")
        return 0.8 if value is None else float(value)

    @property
    def lora_scale(self) -> float:
        """The adapter LoRA's strength (default 1.0)."""
        value = self.spec.get("lora_scale")
        return 1.0 if value is None else float(value)

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "family": self.spec.get("family"),
            "preset": self.preset_name,
            "ip_adapter_scale": self.ip_adapter_scale,
            "lora_scale": self.lora_scale,
            "steps": self.steps,
        }

    # -- checks and loading -----------------------------------------------------------------
    def check(self) -> None:
        """Name the first missing model in one line: the face model, then the pipeline's."""
        from ...pipelines.faceid import FACE_MODEL_HINT

        what = f"method {self.spec.text!r}"
        face = self.spec.get("face_model")
        if face is None:
            raise ModelNotFoundError(
                f"{what}: {FACE_MODEL_HINT.replace('--face-model', 'face_model=')}"
            )
        if not Path(str(face)).expanduser().exists():
            raise ModelNotFoundError(f"{what}: face_model {face}: no such file or folder")
        uses = {"base": "fastface", "model": "fastface", "image_encoder": "image-encoder"}
        for key, source, marker in self._sources():
            check_model_path(source, f"{what}: {key}", marker=marker, use=uses.get(key))

    def _sources(self) -> list[tuple[str, str, str]]:
        """``(setting, source, a file it must hold)`` of every model the pipeline reads."""
        from ...pipelines.fastface_presets import (
            DEFAULT_ADAPTER,
            DEFAULT_BASE,
            DEFAULT_IMAGE_ENCODER,
            FAMILIES,
        )

        get = self.spec.get
        out = []
        if self.model in FAMILIES:
            fam = FAMILIES[self.model]
            out.append(("base", str(get("base") or DEFAULT_BASE), "model_index.json"))
            marker = fam.weight_name or "unet/config.json"
            out.append(("distilled", str(get("distilled") or fam.source), marker))
        else:
            out.append(("model", self.model, "model_index.json"))
            if get("distilled") is not None:
                fam = FAMILIES.get(str(get("family") or ""))
                marker = (fam.weight_name if fam else None) or "unet/config.json"
                out.append(("distilled", str(get("distilled")), marker))
        adapter = str(get("ip_adapter") or DEFAULT_ADAPTER[0])
        if not Path(adapter).expanduser().is_file():  # a file is used as it is
            out.append(("ip_adapter", adapter, DEFAULT_ADAPTER[1]))
        encoder = str(get("image_encoder") or DEFAULT_IMAGE_ENCODER)
        out.append(("image_encoder", encoder, "config.json"))
        return out

    @property
    def pipe(self):
        """The :class:`~instantportrait.pipelines.fastface.FastFacePipeline`, loaded once."""
        if self._pipe is None:
            from ...pipelines.fastface_loading import load_fastface

            pipe = load_fastface(
                self.model,
                family=self.spec.get("family"),
                base=self.spec.get("base"),
                distilled=self.spec.get("distilled"),
                ip_adapter=self.spec.get("ip_adapter"),
                image_encoder=self.spec.get("image_encoder"),
                dtype=self.dtype,
                device=self.device,
            )
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        return self._pipe

    @property
    def preset(self):
        """The preset object (a name or a JSON file), read once."""
        if self._preset is None:
            self._preset = self._read_preset()
        return self._preset

    def _read_preset(self):
        from ...pipelines.fastface_presets import (
            fastface_preset,
            fastface_presets,
            load_preset_file,
        )

        if self.preset_name in fastface_presets():
            return fastface_preset(self.preset_name)
        # a malformed file is one line naming the method (not an internal error)
        return load_preset_file(self.preset_name, name=f"method {self.spec.text!r}: preset")

    def identity(self, image: Image.Image, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(arcface (1, 512), CLIP states)`` of ``image``'s largest face, cached per name."""
        if name not in self._identities:
            from ...pipelines.faceid import FaceIDEncoder, load_face_model

            if self._encoder is None:
                self._encoder = FaceIDEncoder(load_face_model(self.spec.get("face_model")))
            face = self._encoder(image, name=f"identity image of {name}")
            clip = self.pipe.encode_face_crop(face.crop.to(self.device))
            self._identities = {name: (face.arcface.to(self.device), clip)}  # one subject at a time
        return self._identities[name]

    def generate(self, image: Image.Image, prompt: str, seed: int, **context: Any) -> Image.Image:
        # the runner passes the subject's first tuning photo (its identity image) as ``image``
        subject = context.get("subject")
        name = str(context.get("face") or getattr(subject, "name", "face"))
        arcface, clip = self.identity(image, name)
        res = self.spec.get("resolution")
        return self.pipe(
            prompt,
            arcface,
            clip_embeds=clip,
            preset=self.preset,
            num_inference_steps=self.steps,
            height=res,
            width=res,
            ip_adapter_scale=self.ip_adapter_scale,
            lora_scale=self.lora_scale,
            generator=torch.Generator("cpu").manual_seed(int(seed)),
        ).images[0]

    def cost(self) -> dict[str, float | None]:
        from ...components import count_parameters

        return {"params": count_parameters(self.pipe.unet), "steps": self.steps}

    def fingerprint_data(self) -> dict[str, Any]:
        data = super().fingerprint_data()
        data["model"] = model_fingerprint(self.model)
        data["weights"] = {
            key: model_fingerprint(self.spec.get(key))
            for key in _PATH_SETTINGS
            if self.spec.get(key) is not None
        }
        return data

    def close(self) -> None:
        self._pipe = None
        self._encoder = None
        self._identities = {}
