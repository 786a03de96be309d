"""Image-quality metrics: Q-Align quality and aesthetic, ImageReward, LAION aesthetic.

Q-Align and ImageReward pin old dependencies, so each runs in an environment of its own
(:mod:`..metric_envs`, ``instantportrait metric-env create NAME``) through a worker process
(:class:`..metric_worker.MetricWorker`); they load only local files.
"""

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
    from ..metric_worker import MetricWorker

    return MetricWorker("imagereward", src or "THUDM/ImageReward", str(device))


def _load_qalign(src: str | None, device: torch.device):
    from ..metric_worker import MetricWorker

    return MetricWorker("q-align", src or "q-future/one-align", str(device))


register_model(
    ModelSource(
        "imagereward",
        "ImageReward (BLIP reward model, in its own environment)",
        "THUDM/ImageReward",
        "`instantportrait metric-env create imagereward` (its environment and model), or "
        "--weights imagereward=DIR with ImageReward.pt and med_config.json",
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
        "Q-Align (mPLUG-Owl2's own code, in its own environment)",
        "q-future/one-align",
        "`instantportrait metric-env create q-align` (its environment and model), or "
        "--weights q-align=DIR, a local q-future/one-align (runs the folder's code)",
        _load_qalign,
    )
)


def laion_aesthetic(ctx: ItemContext) -> float:
    """The LAION aesthetic predictor on the output's CLIP ViT-L/14 embedding."""
    head = ctx.hub.get("laion-aesthetic")
    with torch.no_grad():
        return float(head(ctx.clip_image("output", "clip-vit-l-14"))[0])


def imagereward(ctx: ItemContext) -> float:
    """ImageReward's ``score(text, image)``, computed by its worker."""
    return ctx.hub.get("imagereward").score(ctx.output_image, text=ctx.text)


def qalign(task: str):
    """Q-Align's score for ``task`` (``quality`` or ``aesthetic``)."""

    def fn(ctx: ItemContext) -> float:
        return ctx.hub.get("q-align").score(ctx.output_image, task=task)

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
        paper="Xu et al. 2023 (ImageReward), in its own environment (metric-env)",
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
