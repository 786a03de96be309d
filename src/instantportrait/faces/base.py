"""The interface every identity embedder implements; losses and metrics take any of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IdentityEmbedder(nn.Module):
    """A face-identity network behind one interface.

    Subclasses set :attr:`template` (the name of the alignment template their crops must
    follow, a key of ``instantportrait.faces.align.TEMPLATES``), :attr:`input_size` (crop side
    in pixels) and :attr:`embedding_dim`, and implement :meth:`forward`, which maps aligned
    RGB crops ``(B, 3, input_size, input_size)`` with values in ``[0, 1]`` to raw descriptors
    ``(B, embedding_dim)``. Any normalisation the network expects is done inside ``forward``,
    so callers only ever pass ``[0, 1]`` crops. Everything is differentiable.
    """

    template: str = "dlib"
    input_size: int = 150
    embedding_dim: int = 128
    #: Euclidean distance between raw descriptors under which two faces are the same person
    #: (dlib's 0.6); ``None`` when the network defines no such threshold.
    same_person_distance: float | None = None

    def forward(self, crops: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``(B, D)`` of aligned ``[0, 1]`` crops."""
        return F.normalize(self(crops), dim=-1)

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity between embeddings, row by row (``(B, D), (B, D) -> (B,)``)."""
        return F.cosine_similarity(a, b, dim=-1)
