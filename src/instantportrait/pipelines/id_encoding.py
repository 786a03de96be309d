"""F_id from face images: the identity encoder shared by FPGA's pipelines (FPGA §2.1).

A face image -> its largest face aligned to the recognition network's template -> ArcFace
(or another face-stack embedder) + CLIP-vision tokens of the crop -> the resampler -> F_id
``(T, D)``. :class:`IDEncodingMixin` gives a ``DiffusionPipeline`` that registers
``resampler`` and ``image_encoder`` and the config keys ``face_embedder`` /
``face_embedder_weights`` the methods :meth:`~IDEncodingMixin.encode_identity` and
:meth:`~IDEncodingMixin.encode_face_crops` (FPGA's ID-ControlNet pipeline and the merged
RepControlNet pipeline use the same encoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelNotFoundError
from ..models.resampler import FACE_CROP_SIZE, align_face, encode_face_crops

__all__ = ["IDEncodingMixin", "IdentityEncoder", "load_identity_encoder"]


@dataclass
class IdentityEncoder:
    """Face images -> F_id: a face-stack ``embedder`` (ArcFace, dlib, ...), a CLIP vision
    tower ``image_encoder`` and the ``resampler`` (all frozen here). ``detector`` (a
    :class:`~instantportrait.faces.detectors.FaceDetectorConfig`) finds the faces and their
    five keypoints (default: SCRFD when the embedder's ONNX sits in an insightface model
    folder, else dlib's HOG)."""

    resampler: Any
    image_encoder: Any
    embedder: Any
    detector: Any = None

    @torch.no_grad()
    def encode_identity(
        self, faces: Sequence[Any], names: Sequence[str] | None = None
    ) -> torch.Tensor:
        """F_id ``(K, T, D)`` of K face images (the largest face of each is used);
        ``names`` name them in errors (default "id image N")."""
        from ..faces.detectors import FaceDetectorConfig

        names = names or [f"id image {i + 1}" for i in range(len(faces))]
        detector = self.detector or FaceDetectorConfig.from_options(
            face_model=getattr(self.embedder, "path", None)
        )
        crops = torch.cat(
            [
                align_face(f, self.embedder.template, FACE_CROP_SIZE, name=n, detector=detector)
                for f, n in zip(faces, names, strict=True)
            ]
        )
        return self.encode_face_crops(crops)

    @torch.no_grad()
    def encode_face_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """F_id ``(B, T, D)`` of aligned face crops ``(B, 3, S, S)`` in [0, 1]."""
        ident, tokens = encode_face_crops(crops, self.embedder, self.image_encoder)
        p = next(self.resampler.parameters())
        return self.resampler(ident.to(p.device, p.dtype), tokens.to(p.device, p.dtype))


class IDEncodingMixin:
    """Identity encoding for a pipeline with ``resampler``, ``image_encoder`` and the
    ``face_embedder`` / ``face_embedder_weights`` config entries."""

    _face_embedder: Any = None
    _face_detector: Any = None

    def register_identity_config(
        self, face_embedder: str, face_embedder_weights: str | None, steps: int, guidance: float
    ) -> None:
        """Record the face embedder and the sampling defaults in the pipeline's config."""
        self.register_to_config(
            face_embedder=face_embedder,
            face_embedder_weights=face_embedder_weights,
            default_steps=int(steps),
            default_guidance_scale=float(guidance),
        )
        self._face_embedder = None

    def set_face_embedder(self, embedder) -> None:
        """Use this face-stack embedder (an ``IdentityEmbedder``) for F_id."""
        self._face_embedder = embedder

    def set_face_detector(self, detector) -> None:
        """Find the faces of F_id with this detector (a ``FaceDetectorConfig`` or a name)."""
        from ..faces.detectors import FaceDetectorConfig

        self._face_detector = (
            detector if isinstance(detector, FaceDetectorConfig) else FaceDetectorConfig(detector)
        )

    def face_embedder(self):
        """The recognition network of F_id (loaded from the config on first use)."""
        if self._face_embedder is None:
            from ..faces.embedders import get_embedder

            self._face_embedder = get_embedder(
                self.config.face_embedder,
                weights=self.config.face_embedder_weights,
                device=self._execution_device,
            )
        return self._face_embedder

    @property
    def has_identity_encoder(self) -> bool:
        """Whether this pipeline can turn face images into F_id (resampler + image encoder)."""
        return getattr(self, "resampler", None) is not None and (
            getattr(self, "image_encoder", None) is not None
        )

    def identity_encoder(self) -> IdentityEncoder:
        """This pipeline's :class:`IdentityEncoder` (its modules, on their current device)."""
        if not self.has_identity_encoder:
            raise ModelNotFoundError(
                f"{type(self).__name__}: this model folder has no identity encoder "
                "(resampler + image_encoder); pass F_id as id_embeds"
            )
        return IdentityEncoder(
            self.resampler, self.image_encoder, self.face_embedder(), self._face_detector
        )

    def encode_identity(
        self, faces: Sequence[Any], names: Sequence[str] | None = None
    ) -> torch.Tensor:
        """F_id ``(K, T, D)`` of K face images (:meth:`IdentityEncoder.encode_identity`)."""
        return self.identity_encoder().encode_identity(faces, names)

    def encode_face_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """F_id ``(B, T, D)`` of aligned face crops (:meth:`IdentityEncoder.encode_face_crops`)."""
        return self.identity_encoder().encode_face_crops(crops)


def load_identity_encoder(folder: str) -> dict[str, Any]:
    """The identity encoder of an FPGA pipeline folder (``train fpga`` or ``init-tiny --kind
    fpga``): ``{"resampler", "image_encoder", "face_embedder", "face_embedder_weights"}``,
    the keyword arguments a pipeline with :class:`IDEncodingMixin` takes."""
    import json
    from pathlib import Path

    from transformers import CLIPVisionModelWithProjection

    from ..models.resampler import IDResampler

    root = Path(folder)
    index = root / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(
            f"identity encoder {root}: no pipeline folder (model_index.json); give the FPGA "
            "pipeline whose resampler made the training F_id (train fpga / init-tiny --kind fpga)"
        )
    config = json.loads(index.read_text())
    for part in ("resampler", "image_encoder"):
        if not (root / part).is_dir():
            raise ModelNotFoundError(f"identity encoder {root}: no {part}/ folder")
    return {
        "resampler": IDResampler.from_pretrained(root, subfolder="resampler").eval(),
        "image_encoder": CLIPVisionModelWithProjection.from_pretrained(
            root, subfolder="image_encoder"
        ).eval(),
        "face_embedder": config.get("face_embedder", "arcface"),
        "face_embedder_weights": config.get("face_embedder_weights"),
    }
