"""FastFace's FSC with the official code's pixel scaling (``fsc_official``).

FastFace's evaluation code (spec §6, §7 item 13) crops the output's face with facenet-pytorch
``MTCNN(image_size=160)``, which returns a float tensor in ``[0, 255]``, and passes it to a
CLIP preprocessing written for tensors in ``[-1, 1]``: ``x -> (x + 1) / 2``, bicubic
``Resize(224)``, ``CenterCrop(224)``, CLIP normalisation, no clamp. The face therefore
reaches CLIP as a nearly saturated image, which is why the paper's FCS values sit in
0.165-0.184. The toolkit's ``fsc`` and ``fsc_paper`` use the correct ``[0, 1]`` scaling;
``fsc_official`` reproduces the official scaling (on ``fsc_paper``'s crop and text) so a run
can be set beside the paper's Table 2. It is a parity flag, not a better metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import metric_fns as fns
from .context import ItemContext
from .registry import Metric, register_metric

__all__ = ["fsc_official", "official_fsc_pixels"]


def official_fsc_pixels(crop: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIP pixel values of a face crop as FastFace's code makes them (spec §7 item 13).

    ``crop``: ``(B, 3, H, W)`` in ``[0, 1]``. The code holds the crop in ``[0, 255]`` and
    treats it as ``[-1, 1]``: ``(255 * crop + 1) / 2``, then bicubic resize of the short side
    to ``size``, centre crop and CLIP's mean/std, without clamping.
    """
    if crop.dim() != 4 or crop.shape[1] != 3:
        raise ValueError(f"crop: expected (B, 3, H, W), got {tuple(crop.shape)}")
    x = (crop.float() * 255.0 + 1.0) / 2.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(fns.CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(fns.CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def fsc_official(ctx: ItemContext) -> float:
    """FSC as FastFace's code computes it, its pixel scaling included: ``prompt.split(';')[0]``
    against the output face's 160-px box crop fed to CLIP ViT-L/14 as the code feeds it."""
    text = fns.style_part_paper(ctx.prompt)
    crop = ctx.box_crop("output", 160)
    model = ctx.hub.get("clip-vit-l-14")
    param = next(model.parameters())
    pixels = official_fsc_pixels(crop, int(model.config.vision_config.image_size))
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels.to(param.device, param.dtype))
    image = out if isinstance(out, torch.Tensor) else out.pooler_output
    return float(fns.cosine(image, ctx.clip_text("clip-vit-l-14", text))[0])


register_metric(
    Metric(
        "fsc_official",
        "FSC (official scaling)",
        "item",
        fsc_official,
        models=("face-detector", "clip-vit-l-14"),
        family="text",
        paper=(
            "FastFace Table 2's FCS as its code computes it: fsc_paper's crop and text, the "
            "0-255 crop fed to a [-1, 1] preprocessing (parity flag; values not comparable "
            "with fsc/fsc_paper)"
        ),
        version=2,  # 2: the box truncated as facenet-pytorch does (was rounded)
    )
)
