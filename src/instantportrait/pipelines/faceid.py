"""Identity inputs of IP-Adapter FaceID(-Plus): an ArcFace embedding and an aligned face crop.

FastFace (spec §1, §5 step 1) feeds IP-Adapter FaceID-Plus-v2 with insightface's
``normed_embedding`` of the largest face (512-d) and the CLIP-ViT-H hidden states of the face
aligned by ``norm_crop(img, kps, 224)``. Here detection and five-point landmarks come from the
project's face stack (dlib), alignment uses insightface's ArcFace template (112 px for the
embedder, scaled to 224 px for CLIP, as ``norm_crop`` does), and the embedder is insightface's
ArcFace ONNX model (``buffalo_l``'s ``w600k_r50.onnx`` or ``antelopev2``'s ``glintr100.onnx``),
an arcface_torch state dict, or any :class:`~instantportrait.faces.base.IdentityEmbedder` the
user passes. Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..faces.base import IdentityEmbedder

__all__ = ["FACE_MODEL_HINT", "FaceIDEncoder", "FaceIDInputs", "load_face_model"]

#: What to provide when no face model was given (one line).
FACE_MODEL_HINT = (
    "FastFace needs an ArcFace face model: pass --face-model with insightface's buffalo_l "
    "w600k_r50.onnx or antelopev2 glintr100.onnx (from the insightface model zoo; "
    "onnxruntime required), or an arcface_torch .pth/.safetensors"
)
#: ONNX recognisers looked for when a model-pack folder is given.
_PACK_FILES = ("w600k_r50.onnx", "glintr100.onnx")


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
    """An ArcFace embedder from a file, a model-pack folder, or as given.

    ``None`` raises :class:`InputError` with :data:`FACE_MODEL_HINT`.
    """
    if isinstance(path, IdentityEmbedder):
        return path
    if path is None:
        raise InputError(FACE_MODEL_HINT)
    from ..faces.embedders import get_embedder

    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / name for name in _PACK_FILES if (p / name).is_file()]
        if not found:
            raise InputError(f"--face-model {p}: no {' or '.join(_PACK_FILES)} in the folder")
        p = found[0]
    if not p.is_file():
        from ..model_sources import missing_model

        raise missing_model("--face-model", p, FACE_MODEL_HINT)
    return get_embedder("arcface", p)


class FaceIDEncoder:
    """Detect the largest face of an image and make the FaceID inputs from it.

    Args:
        embedder: the ArcFace embedder (see :func:`load_face_model`).
        detector: the face stack's detector, ``hog`` (default) or ``mmod``.
        crop_size: the side of the crop given to CLIP (FastFace: 224).
    """

    def __init__(
        self, embedder: IdentityEmbedder, detector: str = "hog", crop_size: int = 224
    ) -> None:
        from ..faces.analyzer import FaceAnalyzer

        self.analyzer = FaceAnalyzer(
            detector=detector, embedder=embedder, template="arcface", select="largest"
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
        lm = face.landmarks68 if face.landmarks68 is not None else face.landmarks5
        crop = self.analyzer.align(pil, lm[None], "arcface", size=self.crop_size)
        return FaceIDInputs(arcface=face.embedding[None].float(), crop=crop.float())
