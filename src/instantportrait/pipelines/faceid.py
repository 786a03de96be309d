"""Identity inputs of IP-Adapter FaceID(-Plus): an ArcFace embedding and an aligned face crop.

FastFace (spec §1, §5 step 1) feeds IP-Adapter FaceID-Plus-v2 with insightface's
``normed_embedding`` of the largest face (512-d) and the CLIP-ViT-H hidden states of the face
aligned by ``norm_crop(img, kps, 224)``. Here the five keypoints come from the selected
detector (:class:`~instantportrait.faces.detectors.FaceDetectorConfig`: insightface's SCRFD
when given, as the adapters were trained, else dlib's 68 landmarks), both crops are
``norm_crop``'s exactly (:func:`~instantportrait.faces.align.norm_crop`: 112 px for the
embedder, 224 px for CLIP), and the embedder is insightface's ArcFace ONNX model
(``buffalo_l``'s ``w600k_r50.onnx`` or ``antelopev2``'s ``glintr100.onnx``), an arcface_torch
state dict, or any :class:`~instantportrait.faces.base.IdentityEmbedder` the user passes.
Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..faces.base import IdentityEmbedder
from ..faces.detectors import FaceDetectorConfig

__all__ = ["FACE_MODEL_HINT", "FaceIDEncoder", "FaceIDInputs", "load_face_model"]

#: What to provide when no face model was given (one line).
FACE_MODEL_HINT = (
    "FastFace needs an ArcFace face model: pass --face-model with insightface's buffalo_l "
    "w600k_r50.onnx or antelopev2 glintr100.onnx (from the insightface model zoo; "
    "onnxruntime required), or an arcface_torch .pth/.safetensors"
)


@dataclass
class FaceIDInputs:
    """The adapter's two identity inputs for one face.

    Attributes:
        arcface: ``(1, 512)`` L2-normalised ArcFace embedding.
        crop: ``(1, 3, 224, 224)`` RGB face crop in ``[0, 1]`` (ArcFace template, 224 px).
    """

    arcface: torch.Tensor
    crop: torch.Tensor


def load_face_model(path: str | os.PathLike | IdentityEmbedder | None) -> IdentityEmbedder:
    """An ArcFace embedder from a file, an insightface model folder, or as given.

    ``None`` raises :class:`InputError` with :data:`FACE_MODEL_HINT`. A folder's detector is
    selected by :meth:`~instantportrait.faces.detectors.FaceDetectorConfig.from_options`.
    """
    if isinstance(path, IdentityEmbedder):
        return path
    if path is None:
        raise InputError(FACE_MODEL_HINT)
    from ..faces.detectors import INSIGHTFACE_RECOGNISERS, insightface_pack
    from ..faces.embedders import get_embedder

    p = Path(path).expanduser()
    if p.is_dir():
        found = insightface_pack(p)[1]
        if found is None:
            names = " or ".join(INSIGHTFACE_RECOGNISERS)
            raise InputError(f"--face-model {p}: no {names} in the folder")
        p = found
    if not p.is_file():
        from ..model_sources import missing_model

        raise missing_model("--face-model", p, FACE_MODEL_HINT)
    return get_embedder("arcface", p)


class FaceIDEncoder:
    """Detect the largest face of an image and make the FaceID inputs from it.

    Args:
        embedder: the ArcFace embedder (see :func:`load_face_model`).
        detector: a :class:`~instantportrait.faces.detectors.FaceDetectorConfig` or a
            detector name (SCRFD gives insightface's own keypoints). Default: SCRFD when the
            embedder's ONNX file sits in an insightface model folder with its detector, else
            ``"hog"``.
        crop_size: the side of the crop given to CLIP (FastFace: 224).
    """

    def __init__(
        self,
        embedder: IdentityEmbedder,
        detector: str | FaceDetectorConfig | None = None,
        crop_size: int = 224,
    ) -> None:
        from ..faces.analyzer import FaceAnalyzer

        if detector is None:
            detector = FaceDetectorConfig.from_options(face_model=getattr(embedder, "path", None))

        self.analyzer = FaceAnalyzer(
            detector=detector,
            embedder=embedder,
            template="arcface",
            select="largest",
            reference=True,
        )
        self.crop_size = crop_size

    @torch.no_grad()
    def __call__(self, image: Any, name: str = "--id-image") -> FaceIDInputs:
        """The inputs for the largest face of ``image``; a face-free image is one clear line."""
        from ..faces.detect import NoFaceFoundError
        from ..io import load_image

        pil = load_image(image, name=name)
        try:
            faces = self.analyzer.analyze(pil)
        except NoFaceFoundError:
            raise InputError(f"{name}: no face found in the identity image") from None
        if not faces:
            raise InputError(f"{name}: no face found in the identity image")
        face = faces[0]
        from ..faces.align import norm_crop

        kps = face.keypoints.numpy()
        crop = norm_crop(np.asarray(pil.convert("RGB")), kps, self.crop_size)
        crop_t = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
        return FaceIDInputs(arcface=face.embedding[None].float(), crop=crop_t)
