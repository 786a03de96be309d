"""DINO (v1) image similarity (DreamBooth §4.1, as FaceA-Net and FPGA report it) and its model.

DreamBooth's transform: resize the short side to 256 (bicubic), centre crop 224, ImageNet
normalisation, then the CLS token of the last layer (after the final layer norm) of DINO
ViT-S/16. The score is the cosine with each reference (held-out photos where the item has
them, else the input), averaged. A DINOv2 folder given as ``dino`` is used through the face
stack's :class:`~instantportrait.faces.dino.DinoFeatureExtractor` instead.
"""

from __future__ import annotations

import torch

from .. import metric_fns as fns
from .context import ItemContext
from .registry import Metric, ModelSource, register_metric, register_model

__all__ = ["ViTClsExtractor", "dino_similarity"]


class ViTClsExtractor(torch.nn.Module):
    """DINO (v1) ViT features as DreamBooth computes them: :func:`~..metric_fns.dino_preprocess`
    (resize 256, centre crop 224, ImageNet normalisation), then the CLS token of the last
    layer after the final layer norm."""

    def __init__(self, model: torch.nn.Module, resize: int = 256, size: int = 224) -> None:
        super().__init__()
        self.model, self.resize, self.size = model, resize, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = fns.dino_preprocess(images, self.resize, self.size)
        p = next(self.model.parameters())
        return self.model(pixel_values=x.to(p.device, p.dtype)).last_hidden_state[:, 0].float()


def load_dino(src: str | None, device: torch.device):
    """A DINO v1 ViT (:class:`ViTClsExtractor`) or a DINOv2 extractor, by the folder's type."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(src)
    if cfg.model_type == "dinov2":
        from ...faces.dino import DinoFeatureExtractor

        return DinoFeatureExtractor.from_pretrained(src, device=device)
    model = AutoModel.from_pretrained(src, add_pooling_layer=False)
    return ViTClsExtractor(model.to(device).eval().requires_grad_(False)).eval()


register_model(
    ModelSource(
        "dino",
        "DINO ViT (DreamBooth's DINO metric) or DINOv2",
        "facebook/dino-vits16",
        "--weights dino=DIR (transformers ViT/DINOv2 folder) or a cached Hub id such as "
        "facebook/dino-vits16",
        load_dino,
    )
)


def dino_similarity(ctx: ItemContext) -> float:
    """Mean cosine of the output's and each reference's DINO features."""
    ext = ctx.hub.get("dino")

    def feats(which):
        def compute():
            with torch.no_grad():
                return ext(ctx.tensor(which)).float()

        return ctx._memo(which, ("dino",), compute)

    out = feats("output")
    refs = ctx.reference_images()
    return sum(float(fns.cosine(out, feats(r))[0]) for r in refs) / len(refs)


register_metric(
    Metric(
        "dino",
        "DINO",
        "item",
        dino_similarity,
        models=("dino",),
        family="reference",
        paper=(
            "DreamBooth §4.1 (FaceA-Net, FPGA): DINO ViT-S/16 CLS cosine (resize 256, centre "
            "crop 224) of the output and the references (held-out photos, else the input)"
        ),
        version=2,
    )
)
