"""Landmark-based face alignment: similarity transforms and differentiable crops.

A face is aligned by the least-squares similarity transform (rotation, uniform scale,
translation; Umeyama 1991) between its landmarks and a canonical *template*, and cropped
with :func:`torch.nn.functional.grid_sample`, so that a loss on the crop sends gradients to
the pixels of the full image (the identity losses of InstantPortrait and FPGA need this).

Coordinates: landmarks and template points are in pixel-centre coordinates (the centre of
pixel ``(row i, column j)`` is ``(x=j, y=i)``), the convention of dlib, OpenCV and
insightface.

Templates (:data:`TEMPLATES`):

* ``"dlib"``: dlib's face chip, ``dlib.get_face_chip(img, shape, size=150, padding=0.25)``
  (``get_face_chip_details`` in dlib/image_transforms/interpolation.h): its 5-point template
  for 5 landmarks, its mean face shape (points 27-54 and 60-64) for 68 landmarks, and the
  same fit direction (template to image), and the same sampling grid: the chip is dlib's
  ``chip_details`` rectangle (centred on the fitted image of the chip centre, side
  ``size * scale``) whose corner pixels sit on its corners, as ``extract_image_chip`` does.
  Matches ``dlib.get_face_chip`` to 8-bit rounding (mean difference ~0.002) when the face is
  shrunk less than 2x; beyond that dlib samples an image pyramid and we average several
  bilinear samples per pixel (``antialias``).
* ``"arcface"``: insightface's 112x112 five-point template (``arcface_dst`` of
  ``insightface/utils/face_align.py``: eye centres, nose tip, mouth corners), fitted from
  the landmarks to the template as ``norm_crop`` does.
* ``"ffhq"``: the 512x512 face-restoration framing of CodeFormer and GFPGAN (facexlib's
  ``FaceRestoreHelper`` template: eye centres, nose tip, mouth corners), fitted like
  ``"arcface"``.
* ``"facenet"``: 160x160, the ArcFace template scaled to 160 px (eyes at 46% of the height).
  This is *not* FaceNet's own framing: facenet-pytorch crops the unrotated MTCNN box, where
  the face fills more of the crop (eye distance about 72-80 px against 50 px here). The
  reference crop is :func:`~instantportrait.faces.mtcnn.facenet_crop`; this template serves
  the differentiable training losses.

Sizes: the ArcFace-family templates scale as insightface's ``estimate_norm``: points times
``size / 112`` (``norm_crop(img, kps, 224)`` doubles them), and for multiples of 128 times
``size / 128`` plus ``8 * size / 128`` on x; the FFHQ template times ``size / 512``
(facexlib); dlib's chip in units of the side.

Landmark sets (``points``): ``"dlib"`` takes dlib's 5 or 68 landmarks (by count);
``"keypoints"`` takes the five reference points of SCRFD and MTCNN (eye centres, nose tip,
mouth corners; :func:`keypoints_from_68` derives them from dlib's 68).

Two warps: :func:`crop_faces` (torch, differentiable, antialiased when shrinking; for training
losses) and :func:`norm_crop` (numpy uint8, insightface's ``norm_crop`` exactly: the similarity
transform of scikit-image's ``SimilarityTransform.estimate`` and ``cv2.warpAffine``'s bilinear
sampling without antialias, border 0; for metrics and embeddings that must match the papers).

For the templates defined by other points than dlib's (``arcface``, ``facenet``), 68
landmarks are reduced to those points exactly (eye centres = mean of the eye contour, nose
tip 30, mouth corners 48 and 54); dlib's 5 landmarks (eye corners and the base of the nose)
use target positions derived once from dlib's mean face shape through the template's own
points, so the 5- and 68-point crops of the same face agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "TEMPLATES",
    "AlignmentTemplate",
    "DLIB_5_FROM_68",
    "crop_faces",
    "crop_matrices",
    "estimate_similarity",
    "estimate_norm",
    "get_template",
    "keypoints_from_68",
    "norm_crop",
    "reduce_landmarks",
    "to_grayscale",
]

#: The indices of dlib's 5 landmarks among the 68 (iBUG 300-W) landmarks: outer and inner
#: corner of the eye on the image's right, outer and inner corner of the eye on the image's
#: left, base of the nose (shape_predictor_5_face_landmarks' order).
DLIB_5_FROM_68 = (45, 42, 36, 39, 33)

# dlib's 5-point chip template in [0, 1] (get_face_chip_details, dlib 19.x).
_DLIB_5 = np.array(
    [
        (0.8595674595992, 0.2134981538014),
        (0.6460604764104, 0.2289674387677),
        (0.1205750620789, 0.2137274526848),
        (0.3340850613712, 0.2290642403242),
        (0.4901123135679, 0.6277975316475),
    ]
)

# dlib's mean face shape, points 17..67, in [0, 1] (get_face_chip_details).
_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
_MEAN_FACE = {i + 17: (x, y) for i, (x, y) in enumerate(zip(_MEAN_FACE_X, _MEAN_FACE_Y))}
# The 68-point subset dlib fits: no jaw, no eyebrows, no lower lip.
_DLIB_68_USED = tuple(i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67))

# insightface's ArcFace template, 112x112 (face_align.arcface_dst): left eye, right eye (as
# seen in the image), nose tip, left and right mouth corners.
_ARCFACE_112 = np.array(
    [
        (38.2946, 51.6963),
        (73.5318, 51.5014),
        (56.0252, 71.7366),
        (41.5493, 92.3655),
        (70.7299, 92.2041),
    ]
)
_ARCFACE_GROUPS = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))

# The FFHQ face-restoration template, 512x512 (facexlib's FaceRestoreHelper, used by
# CodeFormer and GFPGAN): the same five points as ArcFace's, in a looser, higher framing.
_FFHQ_512 = np.array(
    [
        (192.98138, 239.94708),
        (318.90277, 240.19360),
        (256.63416, 314.01935),
        (201.26117, 371.41043),
        (313.08905, 371.15118),
    ]
)


def _fit_similarity_np(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares similarity ``dst ~ a * src + b`` on complex numbers (numpy)."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    a = np.sum(np.conj(zs - ms) * (zd - md)) / np.sum(np.abs(zs - ms) ** 2)
    return complex(a), complex(md - a * ms)


def _mean_face_points(groups: tuple[tuple[int, ...], ...]) -> np.ndarray:
    return np.array([np.mean([_MEAN_FACE[i] for i in g], axis=0) for g in groups])


def _dlib5_targets_for(groups: tuple[tuple[int, ...], ...], targets: np.ndarray) -> np.ndarray:
    """Where dlib's 5 landmarks of the mean face land in a template defined by ``groups``."""
    a, b = _fit_similarity_np(_mean_face_points(groups), targets)
    src = _mean_face_points(tuple((i,) for i in DLIB_5_FROM_68))
    z = a * (src[:, 0] + 1j * src[:, 1]) + b
    return np.stack([z.real, z.imag], axis=-1)


@dataclass(frozen=True)
class AlignmentTemplate:
    """A canonical face layout: where landmarks go in a ``size`` x ``size`` crop.

    Args:
        name: the key in :data:`TEMPLATES`.
        size: the crop side the points are given for.
        points5: ``(5, 2)`` targets of dlib's 5 landmarks (pixel-centre coordinates).
        groups68: for 68 landmarks, each target point is the mean of these landmark indices.
        points68: ``(len(groups68), 2)`` targets of those means.
        dlib_chip: ``True`` follows dlib's chip convention: points are in units of the crop
            side (``p * size``; they scale with it), the template is fitted to the landmarks
            and the crop is dlib's ``chip_details`` rectangle sampled at ``size`` pixels.
            ``False``: pixel-centre points scaled as ``p * S / size`` (insightface, facexlib),
            the landmarks fitted to the template and the transform inverted.
        source: where the template comes from.
        keypoints: ``(5, 2)`` targets of the five reference keypoints (eye centres, nose tip,
            mouth corners).
        insightface_sizes: scale as insightface's ``estimate_norm`` (multiples of 128 get
            ``size / 128`` and an 8/128 shift on x).
    """

    name: str
    size: int
    points5: np.ndarray = field(repr=False)
    groups68: tuple[tuple[int, ...], ...] = field(repr=False)
    points68: np.ndarray = field(repr=False)
    dlib_chip: bool = False
    source: str = ""
    keypoints: np.ndarray | None = field(default=None, repr=False)
    insightface_sizes: bool = False

    def _scale(self, pts: np.ndarray, size: int) -> np.ndarray:
        if size == self.size:
            return pts
        if self.insightface_sizes and size % 112 and size % 128 == 0:
            ratio = size / 128.0
            return pts * ratio + np.array([8.0 * ratio, 0.0])
        return pts * size / self.size

    def targets(
        self, num_landmarks: int, size: int | None = None, points: str = "dlib"
    ) -> np.ndarray:
        """Target points for ``num_landmarks`` (5 or 68) input landmarks at crop side ``size``;
        ``points="keypoints"``: for the five reference keypoints."""
        size = self.size if size is None else int(size)
        if points == "keypoints":
            if num_landmarks != 5 or self.keypoints is None:
                raise ValueError(f"keypoints: expected 5 points, got {num_landmarks}")
            return self._scale(self.keypoints, size)
        if points != "dlib":
            raise ValueError(f"points: 'dlib' or 'keypoints', got {points!r}")
        if num_landmarks == 5:
            return self._scale(self.points5, size)
        if num_landmarks == 68:
            return self._scale(self.points68, size)
        raise ValueError(f"landmarks: expected 5 (dlib) or 68 points, got {num_landmarks}")


def _dlib_template(size: int = 150, padding: float = 0.25) -> AlignmentTemplate:
    """dlib's chip template (``get_face_chip_details(det, size, padding)``)."""

    def place(p: np.ndarray) -> np.ndarray:
        return (padding + p) / (2 * padding + 1) * size

    groups = tuple((i,) for i in _DLIB_68_USED)
    return AlignmentTemplate(
        name="dlib",
        size=size,
        points5=place(_DLIB_5),
        groups68=groups,
        points68=place(_mean_face_points(groups)),
        dlib_chip=True,
        source="dlib get_face_chip_details (size 150, padding 0.25)",
        keypoints=place(_mean_face_points(_ARCFACE_GROUPS)),
    )


def _arcface_template(
    size: int,
    name: str,
    source: str,
    points: np.ndarray = _ARCFACE_112,
    side: int = 112,
    insightface_sizes: bool = False,
) -> AlignmentTemplate:
    """A five-point template (eye centres, nose tip, mouth corners) given at ``side`` px."""
    pts = points * size / side
    return AlignmentTemplate(
        name=name,
        size=size,
        points5=_dlib5_targets_for(_ARCFACE_GROUPS, pts),
        groups68=_ARCFACE_GROUPS,
        points68=pts,
        dlib_chip=False,
        source=source,
        keypoints=pts,
        insightface_sizes=insightface_sizes,
    )


#: The alignment templates by name; an :class:`~.base.IdentityEmbedder`'s ``template``.
TEMPLATES: dict[str, AlignmentTemplate] = {
    "dlib": _dlib_template(),
    "arcface": _arcface_template(
        112, "arcface", "insightface face_align.arcface_dst (112x112)", insightface_sizes=True
    ),
    "facenet": _arcface_template(160, "facenet", "ArcFace template scaled to 160x160"),
    "ffhq": _arcface_template(
        512, "ffhq", "facexlib FaceRestoreHelper face_template (512x512)", _FFHQ_512, 512
    ),
}


def get_template(template: str | AlignmentTemplate) -> AlignmentTemplate:
    """A template by name (a key of :data:`TEMPLATES`) or the template itself."""
    if isinstance(template, AlignmentTemplate):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


def reduce_landmarks(landmarks: torch.Tensor, template: str | AlignmentTemplate) -> torch.Tensor:
    """The landmark points a template fits: dlib's 5 as they are, 68 reduced to its groups."""
    tpl = get_template(template)
    k = landmarks.shape[-2]
    if k == 5:
        return landmarks
    if k != 68:
        raise ValueError(f"landmarks: expected 5 (dlib) or 68 points, got {k}")
    if all(len(g) == 1 for g in tpl.groups68):
        return landmarks[..., [g[0] for g in tpl.groups68], :]
    return torch.stack([landmarks[..., list(g), :].mean(dim=-2) for g in tpl.groups68], dim=-2)


def keypoints_from_68(landmarks68: torch.Tensor) -> torch.Tensor:
    """The five reference keypoints ``(..., 5, 2)`` from dlib's 68 landmarks ``(..., 68, 2)``:
    the eye centres (means of the eye contours 36-41 and 42-47), the nose tip (30) and the
    mouth corners (48, 54), in SCRFD's and MTCNN's order."""
    if landmarks68.shape[-2] != 68:
        raise ValueError(f"landmarks68: expected 68 points, got {landmarks68.shape[-2]}")
    return torch.stack([landmarks68[..., list(g), :].mean(dim=-2) for g in _ARCFACE_GROUPS], -2)


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity ``dst ~ s R src + t`` as ``(B, 2, 3)`` matrices (Umeyama 1991).

    Rotation without reflection, uniform scale, translation; the closed form of the 2-D case
    (Umeyama, TPAMI 1991, eqs. 40-42). Batched and differentiable. ``src``: ``(B, K, 2)``;
    ``dst``: ``(B, K, 2)`` or ``(K, 2)``.
    """
    if dst.dim() == 2:
        dst = dst.unsqueeze(0).expand_as(src)
    ms, md = src.mean(dim=-2, keepdim=True), dst.mean(dim=-2, keepdim=True)
    s, d = src - ms, dst - md
    var = (s * s).sum(dim=(-2, -1)).clamp_min(torch.finfo(src.dtype).tiny)
    ar = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(-1) / var
    ai = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(-1) / var
    rot = torch.stack([torch.stack([ar, -ai], -1), torch.stack([ai, ar], -1)], -2)  # (B, 2, 2)
    t = md.squeeze(-2) - (rot @ ms.squeeze(-2).unsqueeze(-1)).squeeze(-1)
    return torch.cat([rot, t.unsqueeze(-1)], dim=-1)


def _invert_similarity(m: torch.Tensor) -> torch.Tensor:
    rot, t = m[..., :2], m[..., 2:]
    det = rot[..., 0, 0] * rot[..., 1, 1] - rot[..., 0, 1] * rot[..., 1, 0]
    inv = (
        torch.stack(
            [
                torch.stack([rot[..., 1, 1], -rot[..., 0, 1]], -1),
                torch.stack([-rot[..., 1, 0], rot[..., 0, 0]], -1),
            ],
            -2,
        )
        / det[..., None, None]
    )
    return torch.cat([inv, -(inv @ t)], dim=-1)


def crop_matrices(
    landmarks: torch.Tensor,
    template: str | AlignmentTemplate = "dlib",
    size: int | None = None,
    points: str | torch.Tensor = "dlib",
) -> torch.Tensor:
    """``(B, 2, 3)`` maps from crop pixel coordinates to image pixel coordinates.

    ``points``: ``"dlib"`` (dlib's 5 or 68 landmarks), ``"keypoints"`` (the five reference
    keypoints of SCRFD / MTCNN), or a ``(B,)`` bool tensor saying per row (``True``: keypoints;
    a training batch mixing rows of both kinds)."""
    tpl = get_template(template)
    size = tpl.size if size is None else int(size)
    if isinstance(points, torch.Tensor):
        rows = points.to(device=landmarks.device, dtype=torch.bool).reshape(-1)
        if bool(rows.all()) or not bool(rows.any()):
            return crop_matrices(landmarks, tpl, size, "keypoints" if rows.all() else "dlib")
        kps = crop_matrices(landmarks, tpl, size, "keypoints")
        return torch.where(rows[:, None, None], kps, crop_matrices(landmarks, tpl, size, "dlib"))
    k = landmarks.shape[-2]
    dst = tpl.targets(k, size, points)
    dst = torch.as_tensor(dst, dtype=landmarks.dtype, device=landmarks.device)
    src = landmarks if points == "keypoints" else reduce_landmarks(landmarks, tpl)
    if not tpl.dlib_chip:
        return _invert_similarity(estimate_similarity(src, dst))
    # dlib's chip_details(chip_points, img_points, dims) and extract_image_chip: the chip is
    # the rectangle centred on T(size / 2) with sides size * scale, whose corner pixels are
    # centred on its corners (drectangle's inclusive convention), so one chip pixel spans
    # (size * scale - 1) / (size - 1) image pixels.
    m = estimate_similarity(dst.unsqueeze(0).expand_as(src), src)
    rot, t = m[..., :2], m[..., 2]
    scale = torch.sqrt(rot[..., 0, 0] ** 2 + rot[..., 1, 0] ** 2)
    half = torch.full((2,), size / 2.0, dtype=rot.dtype, device=rot.device)
    centre = (rot @ half) + t
    step = (size * scale - 1.0) / max(size - 1, 1)
    lin = rot * (step / scale)[..., None, None]
    offset = centre - lin @ torch.full_like(half, (size - 1) / 2.0)
    return torch.cat([lin, offset.unsqueeze(-1)], dim=-1)


def crop_faces(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    template: str | AlignmentTemplate = "dlib",
    size: int | None = None,
    *,
    antialias: bool = True,
    padding_mode: str = "zeros",
    points: str | torch.Tensor = "dlib",
) -> torch.Tensor:
    """Aligned face crops ``(B, 3, S, S)``, differentiable w.r.t. the image pixels.

    For training losses: antialiased by default, so it differs from insightface's
    ``norm_crop`` when a face is shrunk 2x or more (cosine 0.993-0.999 of an ArcFace
    embedding); metrics and embeddings that must match the papers use :func:`norm_crop`.

    Args:
        images: ``(B, C, H, W)`` float images (any range, any device and dtype).
        landmarks: ``(B, 5, 2)`` dlib 5-point or ``(B, 68, 2)`` landmarks in pixel-centre
            coordinates of ``images``; ``(5, 2)``/``(68, 2)`` is broadcast over the batch.
        template: a key of :data:`TEMPLATES` or an :class:`AlignmentTemplate` (default
            ``"dlib"``).
        size: the crop side (default: the template's, 150 for dlib).
        antialias: when the crop shrinks the face by ``f >= 2`` times, average ``floor(f)``
            (at most 4) bilinear samples per output pixel and axis, instead of plain bilinear
            sampling that aliases (dlib uses an image pyramid there). Default ``True``.
        padding_mode: ``grid_sample``'s padding outside the image (default ``"zeros"``: black,
            as dlib's chips).
        points: ``"dlib"`` (default: ``landmarks`` are dlib's 5 or 68) or ``"keypoints"``
            (the five reference keypoints of SCRFD / MTCNN, see :func:`keypoints_from_68`), or
            a ``(B,)`` bool tensor: keypoints in the rows where it is ``True``, dlib's 5 in the
            others (the trainers' batches, :class:`~instantportrait.data.dataset.PairDataset`).
    """
    if images.dim() != 4:
        raise ValueError(f"images: expected (B, C, H, W), got shape {tuple(images.shape)}")
    tpl = get_template(template)
    size = tpl.size if size is None else int(size)
    b, _, h, w = images.shape
    lm = landmarks.to(device=images.device, dtype=torch.float32)
    if lm.dim() == 2:
        lm = lm.unsqueeze(0)
    if lm.shape[0] == 1 and b > 1:
        lm = lm.expand(b, -1, -1)
    if lm.shape[0] != b:
        raise ValueError(f"landmarks: {lm.shape[0]} sets for a batch of {b} images")
    mats = crop_matrices(lm, tpl, size, points)  # (B, 2, 3) crop -> image, float32
    factor = 1
    if antialias:
        scale = torch.linalg.matrix_norm(mats[:, :, :2], ord=2).max().item()
        factor = max(1, min(4, int(math.floor(scale))))
    n = size * factor
    ticks = (torch.arange(n, device=images.device, dtype=torch.float32) + 0.5) / factor - 0.5
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    ones = torch.ones_like(gx)
    pts = torch.stack([gx, gy, ones], dim=-1).reshape(1, n * n, 3)
    xy = pts @ mats.transpose(1, 2)  # (B, n*n, 2) image pixel coordinates
    norm = torch.tensor([2.0 / w, 2.0 / h], device=images.device)
    grid = ((xy + 0.5) * norm - 1.0).reshape(b, n, n, 2).to(images.dtype)
    crops = F.grid_sample(
        images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False
    )
    if factor > 1:
        crops = F.avg_pool2d(crops, factor)
    return crops


def estimate_norm(keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """insightface's ``estimate_norm``: the ``(2, 3)`` similarity from the image to the
    ``size`` x ``size`` ArcFace crop, fitted on five keypoints (Umeyama 1991, as scikit-image's
    ``SimilarityTransform.estimate``), in float64."""
    kps = np.asarray(keypoints, dtype=np.float64).reshape(5, 2)
    dst = TEMPLATES["arcface"].targets(5, size, "keypoints")
    m = estimate_similarity(torch.from_numpy(kps)[None], torch.from_numpy(dst)[None])
    return m[0].numpy()


def norm_crop(image: np.ndarray, keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """insightface's ``norm_crop(img, kps, size)``: the ArcFace-aligned ``size`` x ``size``
    uint8 crop of an ``HxWx3`` uint8 image, warped as ``cv2.warpAffine`` (bilinear, no
    antialias, border 0; :func:`~.resample.warp_affine`). The reference path of the metrics and
    FaceID embeddings; not differentiable."""
    from .resample import warp_affine

    return warp_affine(image, estimate_norm(keypoints, size), size, size)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601) replicated to 3 channels: g(.).

    InstantPortrait's identity loss compares embeddings of grayscale crops (§3.1, eq. 3).
    ``(..., 3, H, W)`` in, ``(..., 3, H, W)`` out (the three channels are one broadcast view);
    differentiable.
    """
    if images.shape[-3] != 3:
        raise ValueError(f"images: expected 3 channels, got shape {tuple(images.shape)}")
    w = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    luma = (images * w.view(3, 1, 1)).sum(dim=-3, keepdim=True)
    return luma.expand(*images.shape[:-3], 3, *images.shape[-2:])
