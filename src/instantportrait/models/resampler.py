"""FPGA's identity resampler: ArcFace + CLIP-vision face tokens -> F_id (4 × 768), spec §2.1.

The paper says only "global CLIP Vision and ArcFace ... resample into F_id 4×768"; following
the spec's [rec] the design is IP-Adapter FaceID-Plus-v2's: the face-recognition embedding
(ArcFace, 512-d) goes through an MLP to ``num_tokens`` tokens and a LayerNorm (``x``); a
Perceiver resampler (depth 4, 12 heads × 64) whose latents start from ``x`` attends to the
projected CLIP ViT-H/14 penultimate hidden states of the face crop; ``F_id = x + out``.

:func:`encode_face_crops` runs the frozen encoders (any face-stack embedder for the
recognition embedding, a ``transformers`` CLIP vision tower for the tokens) on aligned
face crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

#: CLIP's image normalisation (mean, std), the same for every OpenAI/OpenCLIP ViT.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to ``[media; latents]`` (Perceiver/Flamingo resampler attention)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class IDResampler(ModelMixin, ConfigMixin):
    """ArcFace embedding + CLIP face tokens -> F_id ``(B, num_tokens, cross_attention_dim)``.

    Args:
        id_embed_dim: the recognition embedding's size (512 for ArcFace).
        clip_embed_dim: the CLIP vision tokens' width (1280 for ViT-H/14).
        cross_attention_dim: F_id's width (768, SD1.5's text width).
        num_tokens: F_id's token count (4).
        depth / heads / dim_head / ff_mult: the Perceiver resampler.
    """

    @register_to_config
    def __init__(
        self,
        id_embed_dim: int = 512,
        clip_embed_dim: int = 1280,
        cross_attention_dim: int = 768,
        num_tokens: int = 4,
        depth: int = 4,
        heads: int = 12,
        dim_head: int = 64,
        ff_mult: int = 4,
    ):
        super().__init__()
        dim = cross_attention_dim
        self.id_proj = nn.Sequential(
            nn.Linear(id_embed_dim, id_embed_dim * 2),
            nn.GELU(),
            nn.Linear(id_embed_dim * 2, dim * num_tokens),
        )
        self.id_norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(clip_embed_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, id_embed_dim)`` + ``(B, N, clip_embed_dim)`` -> F_id ``(B, T, D)``."""
        cfg = self.config
        x = self.id_proj(id_embeds).view(-1, cfg.num_tokens, cfg.cross_attention_dim)
        x = self.id_norm(x)
        media = self.proj_in(clip_embeds)
        latents = x
        for attn, ff in self.layers:
            latents = attn(media, latents) + latents
            latents = ff(latents) + latents
        out = self.norm_out(self.proj_out(latents))
        return x + out


def clip_pixels(crops: torch.Tensor, size: int) -> torch.Tensor:
    """Face crops ``(B, 3, S, S)`` in [0, 1] resized and normalised for a CLIP vision tower."""
    x = F.interpolate(crops.float(), size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - mean) / std


@torch.no_grad()
def encode_face_crops(
    crops: torch.Tensor, face_embedder, image_encoder
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoders on aligned face crops ``(B, 3, S, S)`` in [0, 1].

    Returns the recognition embedding ``(B, E)`` (L2-normalised, as insightface's
    ``normed_embedding``) and the CLIP vision tower's penultimate hidden states ``(B, N, C)``.
    Crops are resized to each encoder's input size.
    """
    size = face_embedder.input_size
    x = F.interpolate(crops.float(), size=(size, size), mode="bilinear", align_corners=False)
    dev = next(face_embedder.parameters()).device
    ident = F.normalize(face_embedder.embed(x.to(dev)).float(), dim=-1)
    enc_param = next(image_encoder.parameters())
    pixels = clip_pixels(crops, image_encoder.config.image_size)
    pixels = pixels.to(enc_param.device, enc_param.dtype)
    hidden = image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
    return ident.to(crops.device), hidden.to(crops.device)


#: the side of the aligned face crop every FPGA encoder starts from (CLIP's input size).
FACE_CROP_SIZE = 224


def identity_face(image, name: str = "face", detector=None, landmarks: bool | int | str = True):
    """The largest face of an identity image (its detection; ``landmarks`` as the face
    stack's ``detect`` takes them, ``detector`` a ``FaceDetectorConfig`` or name, default hog).

    The detection :func:`align_face` runs, alone: commands call it on every id image before
    any model loads, so a photo without a face fails at once with one line naming ``name``
    (the option the user typed and the file). Raises the face stack's ``NoFaceFoundError``.
    """
    from ..faces.detect import NoFaceFoundError, detect
    from ..io import load_image

    img = load_image(image, name=name)
    try:
        return detect(img, method=detector or "hog", select="largest", landmarks=landmarks)
    except NoFaceFoundError:
        raise NoFaceFoundError(f"{name}: no face found") from None


def align_face(
    image,
    template: str = "arcface",
    size: int = FACE_CROP_SIZE,
    landmarks=None,
    name: str = "face",
    detector=None,
    points: str = "dlib",
) -> torch.Tensor:
    """The aligned crop ``(1, 3, size, size)`` in [0, 1] of the largest face of ``image``.

    ``template`` is the face embedder's alignment template (so the recognition network
    sees the crops it was trained on); ``landmarks`` skip detection: dlib's 5 or 68 points, or
    the five keypoints with ``points="keypoints"``.
    ``detector``: a ``FaceDetectorConfig`` or a detector name (default ``"hog"``); templates
    other than dlib's are fitted on its five keypoints (SCRFD's / MTCNN's own, else derived
    from dlib's 68). The warp is the differentiable, antialiased one of the face stack, the
    same at training and inference. Raises the face stack's ``NoFaceFoundError`` (one line
    naming ``name``) when no face.
    """
    import numpy as np

    from ..faces.align import crop_faces
    from ..io import load_image

    img = load_image(image, name=name)
    if landmarks is None:
        want = 68 if template == "dlib" else "keypoints"
        found = identity_face(img, name, detector, want)
        if template == "dlib":
            landmarks = found.landmarks68[0]
        else:
            landmarks, points = found.keypoints[0], "keypoints"
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
    return crop_faces(x, lm, template, size, points=points).clamp(0, 1)
