"""LPIPS metrics: item LPIPS against the references and Intra-LPIPS over one subject's outputs.

Item LPIPS compares the output with each reference (held-out photos where the item has them,
else the input), averaged. When their aspect ratios differ, the reference is first cut to the
output's aspect (the largest centred crop), then resized to the output's size (antialiased
bilinear): nothing is stretched. Intra-LPIPS (InstantPortrait App. D) is the mean LPIPS over
all pairs of one subject's outputs under a split's prompts, computed 16 pairs at a time.
"""

from __future__ import annotations

import torch

from .. import metric_fns as fns
from .context import ItemContext
from .registry import Metric, ModelHub, ModelSource, register_metric, register_model

__all__ = ["INTRA_LPIPS_BATCH", "intra_lpips", "item_lpips"]

#: Pairs per LPIPS batch in Intra-LPIPS.
INTRA_LPIPS_BATCH = 16


def _load_lpips(src: str | None, device: torch.device):
    from ..lpips import LPIPS

    return LPIPS.from_weights(src).to(device)


register_model(
    ModelSource(
        "lpips",
        "LPIPS AlexNet/VGG with linear heads v0.1",
        None,
        "--weights lpips=DIR holding torchvision's alexnet-owt-7be5be79.pth and the lpips "
        "package's weights/v0.1/alex.pth (or one .safetensors with both)",
        _load_lpips,
    )
)


def item_lpips(ctx: ItemContext) -> float:
    """Mean LPIPS of the output and each reference (aspect kept, see the module)."""
    net = ctx.hub.get("lpips")
    out = ctx.tensor("output")
    h, w = out.shape[-2:]
    total = 0.0
    refs = ctx.reference_images()
    with torch.no_grad():
        for r in refs:
            ref = fns.crop_to_aspect(ctx.tensor(r), w, h)
            if ref.shape[-2:] != (h, w):
                ref = torch.nn.functional.interpolate(
                    ref, size=(h, w), mode="bilinear", antialias=True, align_corners=False
                )
            total += float(net(out, ref)[0])
    return total / len(refs)


def intra_lpips(images: torch.Tensor, hub: ModelHub) -> float:
    """Intra-LPIPS of ``(N, 3, H, W)`` outputs, batched (:data:`INTRA_LPIPS_BATCH`)."""
    net = hub.get("lpips")
    with torch.no_grad():
        return fns.intra_lpips(net, images.to(hub.device), batch_size=INTRA_LPIPS_BATCH)


register_metric(
    Metric(
        "intra_lpips",
        "Intra-LPIPS",
        "group",
        intra_lpips,
        models=("lpips",),
        higher_is_better=None,
        family="reference",
        paper="InstantPortrait App. D: mean pairwise LPIPS of one input's outputs",
    )
)
register_metric(
    Metric(
        "lpips",
        "LPIPS",
        "item",
        item_lpips,
        models=("lpips",),
        higher_is_better=False,
        family="reference",
        paper=(
            "Zhang et al. 2018, eq. 1: LPIPS of the output and the references (held-out photos, "
            "else the input), the reference centre-cropped to the output's aspect"
        ),
        version=2,
    )
)
