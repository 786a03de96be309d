"""CLIP metrics: CLIP-T (ViT-g, ViT-H, ViT-L), CLIP-I, FSC (two variants) and HPS v2.

CLIP-T is the raw cosine of the output's image embedding and the text (the protocol's
template with the prompt); CLIP-I the cosine of the output's and the references' image
embeddings (held-out photos where the item has them, else the input), averaged over the
references. FSC (FastFace §5.1) compares a face crop of the output with the prompt's style:

* ``fsc`` (this toolkit): the style part before ``;``, not applicable (``n/a``) to prompts
  without one; the crop is the aligned dlib face chip.
* ``fsc_paper`` (FastFace's code): ``prompt.split(";")[0]``, so the *whole prompt* when it
  has no ``;``; the crop is the detection box resized to 160 x 160 (MTCNN's
  ``image_size=160``, margin 0). Our box comes from dlib's detector, not MTCNN.
"""

from __future__ import annotations

import torch

from .. import metric_fns as fns
from .context import ItemContext
from .registry import Metric, ModelSource, NotApplicable, register_metric, register_model

__all__ = ["clip_i", "clip_t", "fsc", "fsc_paper"]


def _load_clip(src: str | None, device: torch.device):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(src)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


_CLIP_PROVIDE = (
    "--weights {key}=DIR (a transformers CLIPModel folder, safetensors) or a Hub id cached "
    "locally, e.g. {hub}"
)
for _key, _desc, _hub in (
    ("clip-vit-g-14", "OpenCLIP ViT-g-14", "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"),
    ("clip-vit-h-14", "OpenCLIP ViT-H-14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ("clip-vit-l-14", "OpenAI CLIP ViT-L/14", "openai/clip-vit-large-patch14"),
    ("clip-vit-b-32", "OpenAI CLIP ViT-B/32", "openai/clip-vit-base-patch32"),
):
    register_model(
        ModelSource(_key, _desc, _hub, _CLIP_PROVIDE.format(key=_key, hub=_hub), _load_clip)
    )
register_model(
    ModelSource(
        "hps-v2",
        "HPS v2 / v2.1 (OpenCLIP ViT-H-14 fine-tune)",
        None,
        "--weights hps-v2=DIR: HPS_v2.1_compressed.pt converted to a transformers CLIPModel "
        "folder (instantportrait.evaluation.convert.openclip_to_transformers)",
        _load_clip,
    )
)


def clip_t(model_key: str, preprocess: str = "crop"):
    """CLIP-T with model ``model_key``: cosine of the output's image and the text
    (``preprocess="pad"``: HPS v2's long-side resize and padding instead of CLIP's crop)."""

    def fn(ctx: ItemContext) -> float:
        image = ctx.clip_image("output", model_key, preprocess)
        return float(fns.cosine(image, ctx.clip_text(model_key, ctx.text))[0])

    return fn


def clip_i(model_key: str = "clip-vit-l-14"):
    """CLIP-I: mean cosine of the output's and each reference's CLIP image embedding."""

    def fn(ctx: ItemContext) -> float:
        out = ctx.clip_image("output", model_key)
        refs = ctx.reference_images()
        return sum(float(fns.cosine(out, ctx.clip_image(r, model_key))[0]) for r in refs) / len(
            refs
        )

    return fn


def fsc(ctx: ItemContext) -> float:
    """FSC, this toolkit's variant (style part only, aligned dlib chip)."""
    style = fns.style_part(ctx.prompt)
    if style is None:
        raise NotApplicable("prompt has no 'style;' part")
    crop = ctx.face_crop("output", "dlib")
    model = ctx.hub.get("clip-vit-l-14")
    img = fns.clip_image_embeddings(model, crop)
    return float(fns.cosine(img, ctx.clip_text("clip-vit-l-14", style))[0])


def fsc_paper(ctx: ItemContext) -> float:
    """FSC as FastFace's code computes it: ``prompt.split(';')[0]`` (the whole prompt without
    a ``;``) against the face's detection box resized to 160 x 160."""
    text = fns.style_part_paper(ctx.prompt)
    crop = ctx.box_crop("output", 160)
    model = ctx.hub.get("clip-vit-l-14")
    img = fns.clip_image_embeddings(model, crop)
    return float(fns.cosine(img, ctx.clip_text("clip-vit-l-14", text))[0])


for _name, _key, _label, _paper in (
    ("clip_t_vitg14", "clip-vit-g-14", "CLIP-T (ViT-g)", "InstantPortrait Table 1"),
    ("clip_t_vith14", "clip-vit-h-14", "CLIP-T (ViT-H)", "InstantPortrait Table 1"),
    ("clip_t_vitl14", "clip-vit-l-14", "CLIP-T (ViT-L)", "FastFace §5.1"),
    ("clip_t_vitb32", "clip-vit-b-32", "CLIP-T (ViT-B/32)", "FaceA-Net §5 (DreamBooth's)"),
):
    register_metric(
        Metric(
            _name,
            _label,
            "item",
            clip_t(_key),
            models=(_key,),
            family="text",
            paper=f"{_paper}: raw cosine of CLIP image and text embeddings",
            uses_template=True,
        )
    )
register_metric(
    Metric(
        "hps_v2",
        "HPS v2",
        "item",
        clip_t("hps-v2", preprocess="pad"),
        models=("hps-v2",),
        family="quality",
        paper=(
            "Wu et al. 2023 (HPS v2): raw cosine of the fine-tuned CLIP ViT-H-14; the image "
            "resized by its long side and zero-padded to 224, as the official scorer does"
        ),
        uses_template=True,
        version=2,
    )
)
register_metric(
    Metric(
        "fsc",
        "FSC",
        "item",
        fsc,
        models=("face-detector", "clip-vit-l-14"),
        family="text",
        paper=(
            "FastFace §5.1, toolkit variant: CLIP ViT-L/14 cosine of the aligned output face "
            "chip and the prompt's style part (n/a without ';')"
        ),
    )
)
register_metric(
    Metric(
        "fsc_paper",
        "FSC (paper)",
        "item",
        fsc_paper,
        models=("face-detector", "clip-vit-l-14"),
        family="text",
        paper=(
            "FastFace §5.1 as its code computes it: CLIP ViT-L/14 cosine of the output face's "
            "box crop (160 px) and prompt.split(';')[0] (the whole prompt without ';')"
        ),
        version=2,  # 2: the box truncated as facenet-pytorch does (was rounded)
    )
)
register_metric(
    Metric(
        "clip_i",
        "CLIP-I",
        "item",
        clip_i("clip-vit-l-14"),
        models=("clip-vit-l-14",),
        family="reference",
        paper=(
            "DreamBooth §4.1 (FaceA-Net, FPGA): CLIP ViT-L/14 image cosine of the output and "
            "the references (held-out photos, else the input), averaged"
        ),
        version=2,
    )
)
