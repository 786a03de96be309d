"""Edit backbones: the denoisers InstantPortrait's editor and trainers reach through one
small interface, so the method's code exists once.

An edit backbone offers ``encode_prompt(prompts)``, ``encode_image(pixels) -> latents``,
``predict(x, sigma_or_t, cond, image_latents, guidance) -> native output``, ``decode(latents)``,
``parameterisation`` (``"epsilon"`` for the InstructPix2Pix UNet, ``"flow"`` for the DiTs:
which formulas of :mod:`instantportrait.parameterization` turn the output into x0 and eps) and
``trainable_modules()``. Where the edit image goes (on the UNet's channels, on the DiT's
sequence) is the backbone's business alone.

* :class:`~.ip2p_unet.InstructPix2PixBackbone`: the InstructPix2Pix UNet (image on the
  channels, epsilon, three-branch guidance); every UNet call of
  :class:`~instantportrait.pipelines.InstantPortraitPipeline` goes through it.
* :class:`~.flux_kontext.FluxKontextBackbone`: FLUX.1 Kontext (image on the sequence,
  velocity, distilled guidance).
* :mod:`~.kontext_adapters`: LoRA adapters on the Kontext transformer, switched by name.
"""

from __future__ import annotations

__all__ = ["is_kontext_folder"]


def is_kontext_folder(path) -> bool:
    """Whether ``path`` is a diffusers folder of a FLUX.1 Kontext pipeline (its
    ``model_index.json`` names ``FluxKontextPipeline`` or this toolkit's Kontext editor)."""
    import json
    from pathlib import Path

    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return False
    return name in ("FluxKontextPipeline", "KontextEditPipeline")
