"""Clone Face Tuning (FPGA §2.4): the spliced two-face batch and the clone-face attention loss.

Every 10th iteration the batch is replaced by its clone-spliced version — the same face twice,
side by side, with ONE identity embedding — and the ID attention maps of the two face
regions are pulled together (eq. 2)::

    L_cfa = ‖ (Crop(F^C_CA, M1) − Crop(F^C_CA, M2)) ⊙ G ‖²₂

Spec [rec] made concrete here, one function each:

* :func:`clone_face_splice`: a W/2 × H crop centred horizontally on the face, twice (the
  image and its condition alike); M1 is the face box in the left copy, M2 = M1 + W/2; a face
  wider than W/2 falls back to squeezing the whole image to half width.
* :func:`gaussian_window`: G, S × S, σ = S/4, peak 1.
* :func:`crop_box`: a map's box region resized to S × S.
* :func:`clone_face_attention_loss`: eq. 2 per ID-attention layer (maps upsampled to the
  latent size, S = max(32, box side)), reduced by the mean, averaged over layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: the weight of L_cfa in eq. 4 and how often the clone-spliced iteration comes.
LAMBDA_CFA = 0.2
CFT_EVERY = 10


def clone_face_splice(
    images: torch.Tensor, conditions: torch.Tensor, boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clone-spliced batch of Clone Face Tuning (FPGA §2.4, [rec] geometry).

    Args:
        images: ``(B, C, H, W)``; conditions: ``(B, C', H, W)`` spliced the same way.
        boxes: ``(B, 4)`` face boxes ``(x0, y0, x1, y1)`` in pixels.
    Returns:
        ``(images', conditions', boxes1, boxes2)``: each row ``[crop | crop]`` of the input's
        size; ``boxes1`` the face in the left copy, ``boxes2 = boxes1`` shifted by ``W // 2``
        (same shape).
    """
    _, _, H, W = images.shape
    half = W // 2
    out_img, out_cond, b1 = [], [], []
    for img, cond, box in zip(images, conditions, boxes.tolist(), strict=True):
        x0, y0, x1, y1 = box
        if x1 - x0 <= half:
            left = int(round((x0 + x1) / 2 - half / 2))
            left = min(max(left, 0), W - half)
            crop_i, crop_c = img[..., left : left + half], cond[..., left : left + half]
            nb = [x0 - left, y0, x1 - left, y1]
        else:  # the face does not fit in half the width: squeeze the whole image instead
            crop_i = F.interpolate(img[None], size=(H, half), mode="bilinear", antialias=True)[0]
            crop_c = F.interpolate(cond[None], size=(H, half), mode="bilinear", antialias=True)[0]
            s = half / W
            nb = [x0 * s, y0, x1 * s, y1]
        out_img.append(torch.cat([crop_i, crop_i], dim=-1))
        out_cond.append(torch.cat([crop_c, crop_c], dim=-1))
        b1.append(nb)
    boxes1 = torch.tensor(b1, dtype=torch.float32, device=boxes.device)
    boxes2 = boxes1 + torch.tensor([half, 0, half, 0], dtype=torch.float32, device=boxes.device)
    if 2 * half != W:  # odd width: pad one column so the output keeps the input's size
        pad = (0, W - 2 * half)
        return (
            F.pad(torch.stack(out_img), pad),
            F.pad(torch.stack(out_cond), pad),
            boxes1,
            boxes2,
        )
    return torch.stack(out_img), torch.stack(out_cond), boxes1, boxes2


def gaussian_window(size: int, sigma: float | None = None, device=None) -> torch.Tensor:
    """G of eq. 2: a 2-D Gaussian ``(size, size)``, peak 1 at the centre, σ = size/4 by default."""
    sigma = size / 4 if sigma is None else sigma
    r = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g[:, None] * g[None, :]


def crop_box(maps: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """``maps`` ``(N, h, w)``'s region ``box`` (cells; floor/ceil to whole cells) resized to
    ``(N, size, size)`` (bilinear)."""
    x0, y0, x1, y1 = box
    h, w = maps.shape[-2:]
    xa, ya = max(0, math.floor(x0)), max(0, math.floor(y0))
    xb, yb = min(w, max(xa + 1, math.ceil(x1))), min(h, max(ya + 1, math.ceil(y1)))
    region = maps[:, ya:yb, xa:xb]
    return F.interpolate(region[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def clone_face_attention_loss(
    maps: list[torch.Tensor],
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    latent_hw: tuple[int, int],
    factor: int = 8,
    min_crop: int = 32,
) -> torch.Tensor:
    """Eq. 2 of FPGA, L_cfa: Gaussian-weighted squared difference of the two faces' ID maps.

    Args:
        maps: per ID-attention layer, ``(B, N, h, w)`` (ID tokens' attention probabilities
            or ID-branch features), each bilinearly upsampled to ``latent_hw``.
        boxes1 / boxes2: ``(B, 4)`` the two same-shaped face boxes in pixels.
        factor: pixels per latent cell (8 for SD's VAE).
        min_crop: crops are resized to S = max(``min_crop``, box side in cells).
    Returns:
        The mean over layers of the mean over (B, N, S, S) of ``((c1 - c2) ⊙ G)²``.
    """
    if not maps:
        raise ValueError("clone_face_attention_loss: no ID attention maps were captured")
    per_layer = []
    for m in maps:
        up = F.interpolate(m.float(), size=latent_hw, mode="bilinear", align_corners=False)
        per_sample = []
        for i in range(up.shape[0]):
            a = (boxes1[i] / factor).tolist()
            b = (boxes2[i] / factor).tolist()
            side = max(a[2] - a[0], a[3] - a[1])
            s = max(min_crop, math.ceil(side))
            g = gaussian_window(s, device=up.device)
            diff = (crop_box(up[i], a, s) - crop_box(up[i], b, s)) * g
            per_sample.append(diff.pow(2).mean())
        per_layer.append(torch.stack(per_sample).mean())
    return torch.stack(per_layer).mean()


def cft_due(step: int, every: int = CFT_EVERY) -> bool:
    """Whether optimisation step ``step`` (0-based) is a Clone Face Tuning iteration."""
    return every > 0 and step % every == 0


def fpga_loss(l_cldm: torch.Tensor, l_cfa: torch.Tensor | None, lam: float = LAMBDA_CFA):
    """Eq. 4 of FPGA: ``L_cldm`` on normal iterations, ``L_cldm + λ·L_cfa`` on CFT ones."""
    return l_cldm if l_cfa is None else l_cldm + lam * l_cfa
