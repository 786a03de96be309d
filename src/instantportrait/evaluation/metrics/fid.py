"""Set metrics: FID (Inception) and FD-DINOv2, the Fréchet distance of two feature sets.

Each is computed per method and split over the outputs of the run against the reference set
(``--reference``, else the subjects' reference photos). With fewer samples than feature
dimensions (2048 for Inception, 1024 for DINOv2 ViT-L/14) the covariance is rank-deficient and the
distance mostly measures the sample size: two sets drawn from one distribution, 50 samples
in 2048-D, score about 3,664. The harness then warns, and every FD row carries its sample
counts and feature dimension (the report prints them beside the value).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from PIL import Image

from ...faces.dino import IMAGENET_MEAN, IMAGENET_STD
from .. import metric_fns as fns
from .registry import Metric, ModelHub, ModelSource, register_metric, register_model

__all__ = [
    "FDSampleWarning",
    "face_boxes_crops",
    "fd_dinov2",
    "fid",
    "fid_face",
    "frechet_with_counts",
]


class FDSampleWarning(UserWarning):
    """A Fréchet distance computed from fewer samples than feature dimensions."""


def frechet_with_counts(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[float, dict]:
    """The Fréchet distance of two ``(N, D)`` feature sets and ``{"n_outputs",
    "n_references", "dim", "biased"}``; warns when either set has fewer samples than ``D``."""
    dim = int(a.shape[1])
    detail = {
        "n_outputs": int(a.shape[0]),
        "n_references": int(b.shape[0]),
        "dim": dim,
        "biased": min(a.shape[0], b.shape[0]) < dim,
    }
    if detail["biased"]:
        warnings.warn(
            f"{name}: {a.shape[0]} outputs and {b.shape[0]} references in {dim}-D features: "
            "fewer samples than dimensions, the distance is dominated by sample-size bias",
            FDSampleWarning,
            stacklevel=2,
        )
    return fns.frechet_distance_from_features(a, b), detail


def _load_inception(src: str | None, device: torch.device):
    from pathlib import Path

    p = Path(src).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    # A TorchScript archive (a graph and tensors, no pickled Python), the format clean-fid and
    # StyleGAN2-ADA publish the TF-Inception port in.
    return torch.jit.load(str(p), map_location=device).eval()


def _load_dinov2(src: str | None, device: torch.device):
    from .dino import load_dino

    return load_dino(src, device)


register_model(
    ModelSource(
        "inception",
        "TF-Inception v3 pool features (FID)",
        None,
        "--weights inception=inception-2015-12-05.pt (clean-fid / StyleGAN2-ADA TorchScript)",
        _load_inception,
    )
)
register_model(
    ModelSource(
        "dinov2",
        "DINOv2 ViT-L/14 features for the Fréchet distance (dgm-eval's model)",
        "facebook/dinov2-large",
        "--weights dinov2=DIR (transformers Dinov2Model folder) or a cached Hub id such as "
        "facebook/dinov2-large (ViT-L/14, the published FD-DINOv2's)",
        _load_dinov2,
    )
)


def fid(
    outputs: Sequence[Image.Image], references: Sequence[Image.Image], hub: ModelHub
) -> tuple[float, dict]:
    """FID with clean-fid's resize to 299 (Parmar et al. 2022)."""
    net = hub.get("inception")

    def feats(images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for im in images:
                x = fns.clean_resize(im, 299).unsqueeze(0).to(hub.device)
                out.append(net(x, return_features=True).reshape(1, -1).float().cpu())
        return torch.cat(out)

    return frechet_with_counts(feats(outputs), feats(references), "FID")


def face_boxes_crops(images: Sequence[Image.Image]) -> tuple[list[Image.Image], int]:
    """Every face of each image cut out by its detection box (dlib HOG, one 2x upsampling),
    and how many images showed no face (they add no crop)."""
    from ...faces.detect import detect

    crops, faceless = [], 0
    for im in images:
        det = detect(im, select="all", landmarks=False, upsample=1, raise_if_none=False)
        if len(det) == 0:
            faceless += 1
        for box in det.boxes:
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            x0, y0 = max(0, x0), max(0, y0)
            x1, y1 = min(im.width, x1), min(im.height, y1)
            if x1 > x0 and y1 > y0:
                crops.append(im.crop((x0, y0, x1, y1)))
    return crops, faceless


def fid_face(
    outputs: Sequence[Image.Image], references: Sequence[Image.Image], hub: ModelHub
) -> tuple[float, dict]:
    """FID of the face crops only (FPGA Table 4: "FID is on the face region only"): every
    detected face of the outputs vs every face of the references, clean-fid resize."""
    out_crops, out_none = face_boxes_crops(outputs)
    ref_crops, ref_none = face_boxes_crops(references)
    if len(out_crops) < 2 or len(ref_crops) < 2:
        raise ValueError(
            f"face FID: needs at least 2 faces on each side (outputs {len(out_crops)}, "
            f"references {len(ref_crops)})"
        )
    value, detail = fid(out_crops, ref_crops, hub)
    detail.update(faceless_outputs=out_none, faceless_references=ref_none)
    return value, detail


def fd_dinov2(
    outputs: Sequence[Image.Image], references: Sequence[Image.Image], hub: ModelHub
) -> tuple[float, dict]:
    """Fréchet distance on DINOv2 features (Stein et al. 2023) as dgm-eval computes it: each
    image squashed to 224x224 by PIL's bicubic filter (:func:`~..metric_fns.
    dgm_eval_dinov2_pixels`), ImageNet normalisation, the CLS token after the final layer
    norm; ViT-L/14 by default. Another DINOv2 size is named in the result's detail."""
    ext = hub.get("dinov2")
    model = getattr(ext, "model", ext)
    p = next(model.parameters())
    mean = torch.tensor(IMAGENET_MEAN, device=p.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=p.device).view(1, 3, 1, 1)

    def feats(images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for im in images:
                x = fns.dgm_eval_dinov2_pixels(im).unsqueeze(0).to(p.device)
                x = ((x - mean) / std).to(p.dtype)
                out.append(model(pixel_values=x).pooler_output.float().cpu())
        return torch.cat(out)

    value, detail = frechet_with_counts(feats(outputs), feats(references), "FD-DINOv2")
    cfg = model.config
    detail["dinov2"] = f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers"
    if (cfg.hidden_size, cfg.num_hidden_layers) != (1024, 24):
        detail["differs_from_published"] = "not ViT-L/14: dgm-eval's FD-DINOv2 uses ViT-L/14"
    return value, detail


register_metric(
    Metric(
        "fid",
        "FID",
        "set",
        fid,
        models=("inception",),
        higher_is_better=False,
        family="reference",
        paper="Heusel et al. 2017 eq. 6, clean resize (Parmar et al. 2022)",
    )
)
register_metric(
    Metric(
        "fid_face",
        "FID (faces)",
        "set",
        fid_face,
        models=("inception",),
        higher_is_better=False,
        family="reference",
        paper="FPGA Table 4: FID on face crops (dlib boxes here), clean resize",
    )
)
register_metric(
    Metric(
        "fd_dinov2",
        "FD-DINOv2",
        "set",
        fd_dinov2,
        models=("dinov2",),
        higher_is_better=False,
        family="reference",
        paper=(
            "Fréchet distance on DINOv2 ViT-L/14 CLS features (Stein et al. 2023), "
            "dgm-eval's preprocessing (bicubic squash to 224)"
        ),
        version=2,
    )
)
