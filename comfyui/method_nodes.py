"""Nodes for FastFace generation, FPGA multi-identity generation and DIIR restoration.

Each loader returns the model as the app's registry loads it; each operation calls the
app's UI-free operation (:mod:`instantportrait.app.methods`), so the node, the app and the
CLI run the same library code. ComfyUI's IMAGE is ``(B, H, W, 3)`` in [0, 1]; MASK ``(B, H, W)``.
"""

from __future__ import annotations

from typing import Any

from .nodes import CATEGORY, _images_to_pil, _pil_to_images

_DEVICE = {
    "device": (["auto", "cpu", "cuda"], {"default": "auto"}),
    "dtype": (["auto", "float32", "float16", "bfloat16"], {"default": "auto"}),
}
_SEED = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})


def _where(device: str, dtype: str) -> tuple[Any, Any]:
    from instantportrait.devices import resolve_device, resolve_dtype

    where = resolve_device(device)
    return where, resolve_dtype(dtype, where)


def _text(value: str) -> str | None:
    return value.strip() or None


class FastFaceLoader:
    """Load FastFace (few-step SDXL + FaceID-Plus-v2) and its ArcFace model."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        text = ("STRING", {"default": ""})
        return {
            "required": {
                "model": ("STRING", {"default": "hyper"}),
                "face_model": text,
                **_DEVICE,
            },
            "optional": {
                "family": (["auto", "hyper", "lightning", "lcm", "turbo"], {"default": "auto"}),
                "base": text,
                "distilled": text,
                "ip_adapter": text,
                "image_encoder": text,
            },
        }

    RETURN_TYPES = ("FASTFACE_MODEL",)
    RETURN_NAMES = ("fastface",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(
        self,
        model: str,
        face_model: str,
        device: str = "auto",
        dtype: str = "auto",
        family: str = "auto",
        base: str = "",
        distilled: str = "",
        ip_adapter: str = "",
        image_encoder: str = "",
    ) -> tuple[Any]:
        from instantportrait.app.models import load_fastface_model

        where, dt = _where(device, dtype)
        return (
            load_fastface_model(
                model.strip(),
                where,
                dt,
                face_model=_text(face_model),
                family=None if family == "auto" else family,
                base=_text(base),
                distilled=_text(distilled),
                ip_adapter=_text(ip_adapter),
                image_encoder=_text(image_encoder),
            ),
        )


class FastFaceGenerate:
    """A portrait of the identity photo's person following the prompt (FastFace)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from instantportrait.pipelines.fastface_presets import fastface_presets

        presets = list(fastface_presets())
        return {
            "required": {
                "fastface": ("FASTFACE_MODEL",),
                "id_image": ("IMAGE",),
                "prompt": ("STRING", {"default": "a portrait in a garden", "multiline": True}),
                "preset": (presets, {"default": "fastface-am1"}),
                "ip_adapter_scale": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 2.0}),
                "seed": _SEED,
                "steps": ("INT", {"default": 4, "min": 1, "max": 100}),
                "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = CATEGORY

    def generate(
        self,
        fastface: Any,
        id_image: Any,
        prompt: str,
        preset: str = "fastface-am1",
        ip_adapter_scale: float = 0.8,
        seed: int = 0,
        steps: int = 4,
        resolution: int = 0,
    ) -> tuple[Any]:
        from instantportrait.app.methods import generate_fastface

        face = _images_to_pil(id_image)[0]  # the first image of the batch is the identity
        res = generate_fastface(
            fastface,
            face,
            " ".join(prompt.split()),
            preset=preset,
            ip_adapter_scale=ip_adapter_scale,
            seed=seed,
            steps=steps,
            resolution=resolution or None,
        )
        return (_pil_to_images([res.image]),)


class FPGALoader:
    """Load an FPGA pipeline folder or a merged RepControlNet (identities in a pose)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("STRING", {"default": ""}), **_DEVICE}}

    RETURN_TYPES = ("FPGA_PIPE",)
    RETURN_NAMES = ("pipe",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any]:
        from instantportrait.app.models import load_fpga_pipeline

        return (load_fpga_pipeline(model.strip(), *_where(device, dtype)),)


class FPGAGenerate:
    """1-4 identities (one face image each, a batch) in a pose: a keypoints JSON (path or
    text; identities go to the people left to right) or a pose image with one mask each."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipe": ("FPGA_PIPE",),
                "id_images": ("IMAGE",),
                "prompt": ("STRING", {"default": "two people on a beach", "multiline": True}),
                "pose_keypoints": ("STRING", {"default": "", "multiline": True}),
                "seed": _SEED,
                "steps": ("INT", {"default": 30, "min": 1, "max": 100}),
                "guidance_scale": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0}),
            },
            "optional": {"pose_image": ("IMAGE",), "face_masks": ("MASK",)},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = CATEGORY

    def generate(
        self,
        pipe: Any,
        id_images: Any,
        prompt: str,
        pose_keypoints: str = "",
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 5.0,
        pose_image: Any = None,
        face_masks: Any = None,
    ) -> tuple[Any]:
        from PIL import Image

        from instantportrait.app.methods import generate_group

        keypoints = pose_keypoints.strip()
        if keypoints.startswith("{"):
            pose: Any = keypoints.encode("utf-8")
        elif keypoints:
            pose = keypoints  # a path to the JSON file
        else:
            pose = None if pose_image is None else _images_to_pil(pose_image)[0]
        masks = None
        if face_masks is not None:
            masks = [
                Image.fromarray((m.clamp(0, 1).cpu().numpy() * 255).astype("uint8"), "L")
                for m in face_masks
            ]
        res = generate_group(
            pipe,
            _images_to_pil(id_images),
            pose,
            " ".join(prompt.split()),
            masks=masks,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
        )
        return (_pil_to_images([res.image]),)


class DIIRLoader:
    """Load a DIIR restorer (SD1.5 + landmark ControlNet, or an FPGA pipeline folder)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("STRING", {"default": ""}), **_DEVICE}}

    RETURN_TYPES = ("DIIR_RESTORER",)
    RETURN_NAMES = ("restorer",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any]:
        from instantportrait.app.models import load_restorer

        return (load_restorer(model.strip(), *_where(device, dtype)),)


class DIIRRestore:
    """Restore every face smaller than ``restore_below`` pixels (DIIR); the rest of each
    image stays as it is. An optional identity image sets who the faces become."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "restorer": ("DIIR_RESTORER",),
                "image": ("IMAGE",),
                "restore_below": ("FLOAT", {"default": 100.0, "min": 1.0, "max": 4096.0}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 100}),
            },
            "optional": {"id_image": ("IMAGE",)},
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "restore"
    CATEGORY = CATEGORY

    def restore(
        self,
        restorer: Any,
        image: Any,
        restore_below: float = 100.0,
        steps: int = 30,
        id_image: Any = None,
    ) -> tuple[Any]:
        from instantportrait.app.methods import restore_faces

        face = None if id_image is None else _images_to_pil(id_image)[0]
        outputs = [
            restore_faces(restorer, img, face, restore_below=restore_below, steps=steps).image
            for img in _images_to_pil(image)
        ]
        return (_pil_to_images(outputs),)


NODE_CLASS_MAPPINGS = {
    "InstantPortraitFastFaceLoader": FastFaceLoader,
    "InstantPortraitFastFaceGenerate": FastFaceGenerate,
    "InstantPortraitFPGALoader": FPGALoader,
    "InstantPortraitFPGAGenerate": FPGAGenerate,
    "InstantPortraitDIIRLoader": DIIRLoader,
    "InstantPortraitDIIRRestore": DIIRRestore,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantPortraitFastFaceLoader": "Load FastFace",
    "InstantPortraitFastFaceGenerate": "FastFace generate (identity photo + prompt)",
    "InstantPortraitFPGALoader": "Load FPGA",
    "InstantPortraitFPGAGenerate": "FPGA generate (1-4 identities in a pose)",
    "InstantPortraitDIIRLoader": "Load DIIR restorer",
    "InstantPortraitDIIRRestore": "DIIR restore small faces",
}
