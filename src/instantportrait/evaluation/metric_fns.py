"""The metric formulas, each a small function on tensors: CLIP-T, CLIP-I, FSC, DINO,
Intra-LPIPS, Fréchet distance, FFC, the LAION aesthetic head and the preprocessing they need.

Every function takes ready networks and ``(B, 3, H, W)`` images in ``[0, 1]`` and does its
own preprocessing in torch (no torchvision), so it runs on any device and dtype. The
registry (:mod:`~instantportrait.evaluation.metrics`) loads the networks; the formulas here
are what the tests check against hand computation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "hps_preprocess",
    "dgm_eval_dinov2_pixels",
    "AestheticPredictor",
    "clean_resize",
    "clip_image_embeddings",
    "clip_image_score",
    "clip_preprocess",
    "clip_text_embeddings",
    "clip_text_score",
    "cosine",
    "crop_to_aspect",
    "dino_preprocess",
    "dino_score",
    "face_failure",
    "face_style_score",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "intra_lpips",
    "pil_to_tensor",
    "style_part",
    "style_part_paper",
]

#: ImageNet's pixel mean and standard deviation (DINO, DINOv2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: OpenAI CLIP's (and OpenCLIP's) pixel mean and standard deviation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pil_to_tensor(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """PIL RGB image(s) of one size as a ``(B, 3, H, W)`` float tensor in ``[0, 1]``."""
    items = [images] if isinstance(images, Image.Image) else list(images)
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in items]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity ``<a, b> / (|a| |b|)`` in float32: ``(B, D), (B, D) -> (B,)``."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """CLIP's image transform in torch: bicubic resize of the short side to ``size``
    (antialiased), centre crop ``size x size``, clamp to ``[0, 1]``, normalise by ``mean``/``std``.

    Radford et al. 2021 (CLIP), the ``preprocess`` of openai/CLIP and open_clip. ``images`` are
    ``(B, 3, H, W)`` in ``[0, 1]``; the output keeps their device and dtype.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = images.float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(images.dtype)


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def hps_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """HPS v2's image transform in torch (Wu et al. 2023; the official scorer's validation
    transform): bicubic resize (antialiased, no clamp) of the *long* side to ``size``, zero
    padding to a centred ``size x size`` square (left/top get half the padding, rounded
    down), then CLIP's normalisation. Unlike :func:`clip_preprocess` nothing is cropped away,
    which changes the score of non-square images (InstantPortrait's 1024x576).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    x = images.float()
    scale = size / max(h, w)
    if scale != 1.0 or h != w:
        nh, nw = round(h * scale), round(w * scale)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        ph, pw = size - nh, size - nw
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(images.dtype)


def clip_image_embeddings(
    model: nn.Module, images: torch.Tensor, preprocess: str = "crop"
) -> torch.Tensor:
    """Projected CLIP image embeddings ``(B, D)`` (not normalised) of ``[0, 1]`` images.

    ``model`` is a ``transformers.CLIPModel``; its vision config gives the input size.
    ``preprocess``: ``"crop"`` (CLIP's own: short side, centre crop; :func:`clip_preprocess`)
    or ``"pad"`` (HPS v2's: long side, zero padding; :func:`hps_preprocess`).
    """
    size = int(model.config.vision_config.image_size)
    transform = {"crop": clip_preprocess, "pad": hps_preprocess}[preprocess]
    pixels = transform(images.to(_model_device(model)), size).to(_model_dtype(model))
    out = model.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_text_embeddings(model: nn.Module, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Projected CLIP text embeddings ``(B, D)`` (not normalised); texts truncated to 77 tokens.

    ``tokenizer`` is CLIP's BPE tokenizer (:func:`instantportrait.components.clip_tokenizer`,
    the same vocabulary for OpenAI CLIP and OpenCLIP); padding is end-of-text, and the text
    model pools at the first end-of-text token.
    """
    max_len = min(
        int(getattr(tokenizer, "model_max_length", 77)),
        int(model.config.text_config.max_position_embeddings),
    )
    ids = tokenizer(
        list(texts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
    ).input_ids.to(_model_device(model))
    out = model.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_text_score(
    model: nn.Module, tokenizer, images: torch.Tensor, texts: Sequence[str]
) -> torch.Tensor:
    """CLIP-T: raw cosine between the CLIP embeddings of each image and its text, ``(B,)``.

    InstantPortrait Table 1 (CLIP-T with OpenCLIP ViT-g-14 / ViT-H-14, reported as the raw
    cosine, about 0.2-0.35) and FastFace §5.1 (OpenAI CLIP ViT-L/14); Hessel et al. 2021's
    CLIPScore without its 2.5 weight and clipping at 0.
    """
    image = clip_image_embeddings(model, images)
    return cosine(image, clip_text_embeddings(model, tokenizer, texts))


def clip_image_score(
    model: nn.Module, images: torch.Tensor, references: torch.Tensor
) -> torch.Tensor:
    """CLIP-I: cosine between the CLIP image embeddings of outputs and references, ``(B,)``.

    DreamBooth (Ruiz et al. 2023, §4.1) subject fidelity, as FaceA-Net and FPGA report it.
    """
    return cosine(clip_image_embeddings(model, images), clip_image_embeddings(model, references))


def style_part(prompt: str) -> str | None:
    """The style of a FastFace-structured prompt ``"style; person ..."``: the text before the
    first ``;`` (stripped), or ``None`` when the prompt has no such part (FastFace §5.1)."""
    if ";" not in prompt:
        return None
    style = prompt.split(";", 1)[0].strip()
    return style or None


def style_part_paper(prompt: str) -> str:
    """The text FastFace's evaluation code compares a face with: ``prompt.split(";")[0]``
    stripped, i.e. the style part, or the whole prompt when it has no ``;``."""
    return prompt.split(";", 1)[0].strip()


def face_style_score(
    model: nn.Module, tokenizer, face_crops: torch.Tensor, styles: Sequence[str]
) -> torch.Tensor:
    """FSC, face style consistency: CLIP cosine between the face crop of an output and the
    style part of its prompt, ``(B,)`` (FastFace §5.1): does the face, not only the scene,
    take the requested style."""
    return clip_text_score(model, tokenizer, face_crops, styles)


@torch.no_grad()
def dino_score(
    extractor: Callable[[torch.Tensor], torch.Tensor], images, references
) -> torch.Tensor:
    """DINO: cosine between self-supervised ViT features of outputs and references, ``(B,)``.

    DreamBooth (Ruiz et al. 2023, §4.1: DINO ViT-S/16 CLS embeddings), as FaceA-Net and FPGA
    report it. ``extractor`` maps ``[0, 1]`` images to ``(B, D)`` features (e.g.
    :class:`~instantportrait.faces.dino.DinoFeatureExtractor`).
    """
    return cosine(extractor(images), extractor(references))


def intra_lpips(
    lpips_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 16,
) -> float:
    """Intra-LPIPS: the mean LPIPS over all unordered pairs of outputs of *one* input under
    different prompts (InstantPortrait App. D): how much the edits of one face differ.

    ``images``: ``(N, 3, H, W)`` in ``[0, 1]``, ``N >= 2``; ``lpips_fn(a, b)`` returns ``(B,)``
    distances of ``[0, 1]`` image batches. Returns ``2 / (N (N-1)) * sum_{i<j} LPIPS(x_i, x_j)``.
    Pairs run ``batch_size`` at a time (40 prompts make 780 pairs: one batch would need
    tens of GiB at 512 px).
    """
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"intra_lpips: needs at least 2 outputs of one input, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size: at least 1, got {batch_size}")
    pairs = list(itertools.combinations(range(n), 2))
    total = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        a = images[[i for i, _ in chunk]]
        b = images[[j for _, j in chunk]]
        total += float(lpips_fn(a, b).double().sum())
    return total / len(pairs)


def crop_to_aspect(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The largest centred crop of ``(B, C, H, W)`` images with the aspect ratio
    ``width / height`` (unchanged when the aspects already agree within half a pixel)."""
    h, w = images.shape[-2:]
    target = width / height
    if abs(w / h - target) * min(h, w) < 0.5:
        return images
    if w / h > target:  # too wide: cut the sides
        nw = max(1, round(h * target))
        left = (w - nw) // 2
        return images[..., :, left : left + nw]
    nh = max(1, round(w / target))
    top = (h - nh) // 2
    return images[..., top : top + nh, :]


def dino_preprocess(images: torch.Tensor, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """DreamBooth's DINO transform in torch: bicubic (antialiased) resize of the short side
    to ``resize`` (the long side ``int(resize * long / short)``, as torchvision's ``Resize``),
    centre crop ``crop x crop`` (torchvision's rounding), clamp to ``[0, 1]``, ImageNet
    normalisation. ``(B, 3, H, W)`` in ``[0, 1]``; keeps device and dtype."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h <= w:
        nh, nw = resize, int(resize * w / h)
    else:
        nh, nw = int(resize * h / w), resize
    x = images.float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    x = x[..., top : top + crop, left : left + crop].clamp(0, 1)
    m = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(images.dtype)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, float64
    (Heusel et al. 2017, FID: the Gaussian fitted to the features)."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features)
    f = f.astype(np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected (N >= 2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigen-decomposition)."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians (Heusel et al. 2017, FID, eq. 6; Dowson & Landau 1982):
    ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    ``Tr((S1 S2)^(1/2))`` is computed as ``Tr((S1^(1/2) S2 S1^(1/2))^(1/2))``, a symmetric PSD
    matrix with the same eigenvalues, so no complex square root (scipy's ``sqrtm``) is needed.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _sqrtm_psd(s1)
    vals = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = float(np.sqrt(np.clip(vals, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_from_features(a, b) -> float:
    """FID/FD between two feature sets ``(N, D)``, ``(M, D)`` (see :func:`frechet_distance`)."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def dgm_eval_dinov2_pixels(image: Image.Image, size: int = 224) -> torch.Tensor:
    """FD-DINOv2's input as dgm-eval computes it (Stein et al. 2023, the published metric):
    the whole image resized to ``size x size`` by PIL's bicubic filter (no aspect kept, no
    crop), in ``[0, 1]``, ``(3, size, size)``; ImageNet normalisation follows in the model."""
    resized = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)


def clean_resize(image: Image.Image, size: int = 299) -> torch.Tensor:
    """clean-fid's resize (Parmar et al. 2022, "On Aliased Resizing and Surprising Subtleties in
    GAN Evaluation", §3): each channel as a float32 PIL image, bicubic (antialiased) to
    ``size x size``; returns ``(3, size, size)`` float in ``[0, 255]`` like clean-fid."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    channels = [
        np.asarray(Image.fromarray(arr[..., c], mode="F").resize((size, size), Image.BICUBIC))
        for c in range(3)
    ]
    return torch.from_numpy(np.stack(channels).clip(0, 255).astype(np.float32))


def face_failure(references_have_face: Sequence[bool], output_has_face: bool) -> bool:
    """FFC's per-item rule (FastFace §5.1, its ``face_fail_cnt``): the item counts as a face
    failure when *any* reference or the output shows no face (then it cannot be scored for
    identity). The count over items is the metric; failed generations count too."""
    return not output_has_face or not all(references_have_face)


class AestheticPredictor(nn.Module):
    """The LAION aesthetic predictor v2 (Schuhmann, "improved-aesthetic-predictor"): an MLP on
    L2-normalised CLIP ViT-L/14 image embeddings, predicting a 1-10 rating.

    Layout of its published state dict ``sac+logos+ava1-l14-linearMSE.pth`` (keys
    ``layers.{0,2,4,6,7}.{weight,bias}``): Linear(768, 1024), Dropout, Linear(1024, 128),
    Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1). ``linear=True`` builds
    the v1 head instead (one Linear(768, 1), keys ``weight``/``bias``).
    """

    def __init__(self, in_dim: int = 768, linear: bool = False) -> None:
        super().__init__()
        self.linear = linear
        if linear:
            self.head = nn.Linear(in_dim, 1)
        else:
            self.layers = nn.Sequential(
                nn.Linear(in_dim, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` CLIP image embeddings (normalised here) -> ``(B,)`` ratings."""
        x = F.normalize(image_embeddings.float(), dim=-1).to(self._dtype())
        out = self.head(x) if self.linear else self.layers(x)
        return out.squeeze(-1).float()

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> AestheticPredictor:
        """Build from the published state dict (v2 MLP, or the v1 linear head)."""
        if "layers.0.weight" in state_dict:
            model = cls(in_dim=int(state_dict["layers.0.weight"].shape[1]))
        elif "weight" in state_dict:
            model = cls(in_dim=int(state_dict["weight"].shape[1]), linear=True)
            state_dict = {f"head.{k}": v for k, v in state_dict.items()}
        else:
            raise ValueError("not a LAION aesthetic predictor state dict (no layers.0.weight)")
        model.load_state_dict(state_dict)
        return model.eval().requires_grad_(False)
