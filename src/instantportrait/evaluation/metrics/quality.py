"""Image-quality metrics: Q-Align quality and aesthetic, ImageReward, LAION aesthetic."""

from __future__ import annotations

import torch

from .. import metric_fns as fns
from .context import ItemContext
from .registry import Metric, ModelSource, register_metric, register_model

__all__ = ["laion_aesthetic", "qalign"]


def _load_aesthetic(src: str | None, device: torch.device):
    from ...faces.embedders import read_state_dict

    state = read_state_dict(src, "LAION aesthetic")
    return fns.AestheticPredictor.from_state_dict(state).to(device)


def _load_imagereward(src: str | None, device: torch.device):
    from ...errors import optional_import

    rm = optional_import("ImageReward", "imagereward", "the ImageReward metric")
    return rm.load(src, device=str(device))


def _load_qalign(src: str | None, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=True)
    return model.to(device).eval()


register_model(
    ModelSource(
        "imagereward",
        "ImageReward (BLIP reward model)",
        None,
        "pip install 'instantportrait[imagereward]' (image-reward pins old dependencies: "
        "best in its own environment) and --weights imagereward=ImageReward.pt",
        _load_imagereward,
    )
)
register_model(
    ModelSource(
        "laion-aesthetic",
        "LAION aesthetic predictor v2 (MLP on CLIP ViT-L/14)",
        None,
        "--weights laion-aesthetic=ava+logos-l14-linearMSE.pth (FastFace's code; or "
        "sac+logos+ava1-l14-linearMSE.pth), from improved-aesthetic-predictor",
        _load_aesthetic,
    )
)
register_model(
    ModelSource(
        "q-align",
        "Q-Align (mPLUG-Owl2, runs the model's own code)",
        None,
        "--weights q-align=DIR|q-future/one-align (executes its trust_remote_code)",
        _load_qalign,
    )
)


def laion_aesthetic(ctx: ItemContext) -> float:
    """The LAION aesthetic predictor on the output's CLIP ViT-L/14 embedding."""
    head = ctx.hub.get("laion-aesthetic")
    with torch.no_grad():
        return float(head(ctx.clip_image("output", "clip-vit-l-14"))[0])


def imagereward(ctx: ItemContext) -> float:
    """ImageReward's ``score(text, image)``."""
    model = ctx.hub.get("imagereward")
    with torch.no_grad():
        return float(model.score(ctx.text, ctx.output_image))


def qalign(task: str):
    """Q-Align's score for ``task`` (``quality`` or ``aesthetic``)."""

    def fn(ctx: ItemContext) -> float:
        model = ctx.hub.get("q-align")
        with torch.no_grad():
            out = model.score([ctx.output_image], task_=task, input_="image")
        return float(torch.as_tensor(out).flatten()[0])

    return fn


for _task, _label in (("quality", "Q-Align quality"), ("aesthetic", "Q-Align aesthetic")):
    register_metric(
        Metric(
            f"qalign_{_task}",
            _label,
            "item",
            qalign(_task),
            models=("q-align",),
            family="quality",
            paper="Wu et al. 2024 (Q-Align), InstantPortrait Table 1",
        )
    )
register_metric(
    Metric(
        "imagereward",
        "ImageReward",
        "item",
        imagereward,
        models=("imagereward",),
        family="quality",
        paper="Xu et al. 2023 (ImageReward)",
        requires=("ImageReward",),
        install_hint="pip install 'instantportrait[imagereward]'",
        uses_template=True,
    )
)
register_metric(
    Metric(
        "laion_aesthetic",
        "LAION aesthetic",
        "item",
        laion_aesthetic,
        models=("laion-aesthetic", "clip-vit-l-14"),
        family="quality",
        paper="LAION aesthetic predictor v2: MLP on CLIP ViT-L/14 image embeddings",
    )
)
