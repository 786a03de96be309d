"""Text conditioning shared by pipelines and trainers: prompts to CLIP text embeddings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def token_ids(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """``(len(texts), model_max_length)`` token ids, padded and truncated."""
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(
    tokenizer,
    text_encoder,
    texts: Sequence[str],
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    tokenize: Callable[[list[str]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """CLIP embeddings ``(B, 77, D)`` of ``texts`` (padded to the tokenizer's length,
    truncated beyond it); each distinct text runs through the encoder once.

    ``dtype``: cast the result (e.g. to the UNet's dtype); ``None`` keeps the encoder's.
    ``tokenize``: texts -> token ids, e.g. a pipeline's cached tokenizer (default
    :func:`token_ids`).
    """
    texts = list(texts)
    unique = list(dict.fromkeys(texts))
    ids = (tokenize or (lambda t: token_ids(tokenizer, t)))(unique).to(device)
    embeds = text_encoder(ids)[0]
    if dtype is not None:
        embeds = embeds.to(dtype=dtype)
    if len(unique) == len(texts):
        return embeds
    if len(unique) == 1:
        return embeds.expand(len(texts), -1, -1)
    where = {text: i for i, text in enumerate(unique)}
    # slices, not an index tensor: no host-to-device copy
    return torch.cat([embeds[where[t] : where[t] + 1] for t in texts])
