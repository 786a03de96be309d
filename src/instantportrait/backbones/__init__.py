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
* :class:`~.qwen_edit.QwenEditBackbone`: Qwen-Image-Edit (image on the sequence and through
  the Qwen2.5-VL prompt encoder, velocity, true CFG).
"""

from __future__ import annotations

__all__ = [
    "QWEN_EDIT_CLASSES",
    "dit_editor_folder",
    "dit_family",
    "is_kontext_folder",
    "is_qwen_edit_folder",
    "pipeline_class",
]


def pipeline_class(path) -> str:
    """The ``_class_name`` of ``path``'s ``model_index.json`` ("" when there is none)."""
    import json
    from pathlib import Path

    index = Path(path) / "model_index.json"
    if not index.is_file():
        return ""
    try:
        return str(json.loads(index.read_text()).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def is_kontext_folder(path) -> bool:
    """Whether ``path`` is a diffusers folder of a FLUX.1 Kontext pipeline (its
    ``model_index.json`` names ``FluxKontextPipeline`` or this toolkit's Kontext editor)."""
    return pipeline_class(path) in ("FluxKontextPipeline", "KontextEditPipeline")


#: ``model_index.json`` class names of Qwen-Image-Edit folders: the first release, the
#: 2509/2511 releases (diffusers' Plus pipeline) and this toolkit's Qwen editor.
QWEN_EDIT_CLASSES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline", "QwenEditPipeline")


def is_qwen_edit_folder(path) -> bool:
    """Whether ``path`` is a diffusers folder of a Qwen-Image-Edit pipeline (its
    ``model_index.json`` names one of :data:`QWEN_EDIT_CLASSES`: ``Qwen/Qwen-Image-Edit``,
    ``-2509``, ``-2511`` or this toolkit's Qwen editor)."""
    return pipeline_class(path) in QWEN_EDIT_CLASSES


def dit_family(path) -> str | None:
    """``"FLUX.1 Kontext"`` or ``"Qwen-Image-Edit"`` for a folder of that DiT editor, else
    ``None`` (an InstructPix2Pix-format editor, a file, or nothing)."""
    if is_kontext_folder(path):
        return "FLUX.1 Kontext"
    if is_qwen_edit_folder(path):
        return "Qwen-Image-Edit"
    return None


def dit_editor_folder(model) -> tuple | None:
    """``(family, folder)`` when ``model`` is a DiT editor's folder (:func:`dit_family`), or a
    Hub id whose cached snapshot is one; ``None`` otherwise. Reads ``model_index.json`` only,
    so the CLI can ask before anything heavy is imported."""
    from pathlib import Path

    from ..model_sources import cached_snapshot, looks_like_hub_id

    path = Path(str(model)).expanduser()
    if not path.exists() and looks_like_hub_id(str(model)):
        path = cached_snapshot(str(model)) or path
    family = dit_family(path) if path.is_dir() else None
    return None if family is None else (family, path)
