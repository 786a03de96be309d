"""The node classes. ComfyUI's IMAGE is a float tensor ``(B, H, W, 3)`` in [0, 1]."""

from __future__ import annotations

from typing import Any

CATEGORY = "InstantPortrait"


def _images_to_pil(images: Any) -> list[Any]:
    from instantportrait.io import load_image

    return [
        load_image(frame.permute(2, 0, 1), name=f"image[{i}]") for i, frame in enumerate(images)
    ]


def _pil_to_images(pils: list[Any]) -> Any:
    import numpy as np
    import torch

    arrays = [np.asarray(p, dtype=np.float32) / 255.0 for p in pils]
    return torch.from_numpy(np.stack(arrays))


class InstantPortraitLoader:
    """Load an InstantPortrait editor (IPNet / IDE-Net / InstructPix2Pix format)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("STRING", {"default": "", "multiline": False}),
                "device": (["auto", "cpu", "cuda"], {"default": "auto"}),
                "dtype": (["auto", "float32", "float16", "bfloat16"], {"default": "auto"}),
            }
        }

    RETURN_TYPES = ("INSTANTPORTRAIT_PIPE",)
    RETURN_NAMES = ("pipe",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any]:
        from instantportrait.app.models import load_edit_pipeline
        from instantportrait.devices import resolve_device, resolve_dtype

        where = resolve_device(device)
        return (load_edit_pipeline(model.strip(), where, resolve_dtype(dtype, where)),)


class InstantPortraitEdit:
    """Edit portraits by an instruction in one step (or the checkpoint's own steps)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipe": ("INSTANTPORTRAIT_PIPE",),
                "image": ("IMAGE",),
                "instruction": (
                    "STRING",
                    {"default": "wearing a 1920s flapper dress", "multiline": True},
                ),
                "steps": ("INT", {"default": 0, "min": 0, "max": 100}),
                "style_boost": ("INT", {"default": 1, "min": 1, "max": 4}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "edit"
    CATEGORY = CATEGORY

    def edit(
        self,
        pipe: Any,
        image: Any,
        instruction: str,
        steps: int = 0,
        style_boost: int = 1,
        seed: int = 0,
        resolution: int = 512,
    ) -> tuple[Any]:
        from instantportrait.app.handlers import edit_portrait

        outputs = []
        for portrait in _images_to_pil(image):
            result = edit_portrait(
                pipe,
                portrait,
                " ".join(instruction.split()),  # one instruction, whatever its line breaks
                steps=steps or None,
                iterations=style_boost,
                seed=seed,
                resolution=resolution,
                measure_identity=False,
            )
            outputs.append(result.images[0])
        return (_pil_to_images(outputs),)


NODE_CLASS_MAPPINGS = {
    "InstantPortraitLoader": InstantPortraitLoader,
    "InstantPortraitEdit": InstantPortraitEdit,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "InstantPortraitLoader": "Load InstantPortrait editor",
    "InstantPortraitEdit": "InstantPortrait edit (one step)",
}
