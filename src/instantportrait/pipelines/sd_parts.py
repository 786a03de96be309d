"""The Stable Diffusion components of a base model, checked before they load.

FaceA-Net's G_id, FPGA's and RepControlNet's base share this: a diffusers folder or Hub id
(from the Hugging Face cache offline) whose layout fits the use is checked from its configs
(:func:`~instantportrait.model_check.check_model`), then its ``vae``, ``text_encoder``,
``tokenizer``, ``unet`` and ``scheduler`` load; any failure is one line naming the option.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelNotFoundError

#: the subfolders read, in loading order.
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_sd_parts(
    base: str, use: str, what: str, how: str, scheduler_class: Any = None
) -> dict[str, Any]:
    """``{unet, vae, text_encoder, tokenizer, scheduler}`` of ``base`` checked for ``use``.

    ``what``: the option naming ``base`` in errors; ``how``: how to provide it;
    ``scheduler_class``: the scheduler to build from its config (default DDIM).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..model_check import check_model
    from ..model_sources import locate

    check_model(base, use, what, how=how)
    where = str(locate(base, what, how))
    loaders = {
        "unet": UNet2DConditionModel,
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "tokenizer": CLIPTokenizer,
        "scheduler": scheduler_class or DDIMScheduler,
    }
    parts = {}
    for name in SD_PARTS:
        try:
            parts[name] = loaders[name].from_pretrained(where, subfolder=name)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(
                f"{what} {base}: cannot load its {name}/ ({first[:160]}); {how}"
            ) from None
    return parts
