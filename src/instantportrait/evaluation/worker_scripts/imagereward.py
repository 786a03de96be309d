"""ImageReward (Xu et al. 2023; FastFace Table 2) in its own environment.

``image-reward`` pins old transformers and timm; ``instantportrait metric-env create
imagereward`` builds its environment and stores the model there. ``--weights`` is a folder
with ``ImageReward.pt`` and ``med_config.json`` (THUDM/ImageReward), the ``.pt`` file with
``med_config.json`` beside it, or the Hub id as stored in the environment's cache. BLIP's
BERT tokenizer (``bert-base-uncased``) is read from the environment's Hugging Face cache,
offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from protocol import serve


def load(weights: str, device: str):
    import ImageReward as RM  # noqa: N814 - the package's own name

    path = Path(weights)
    if not path.exists():  # a Hub id: the environment's cache, offline
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(weights, local_files_only=True))
    folder = path if path.is_dir() else path.parent
    checkpoint = folder / "ImageReward.pt" if path.is_dir() else path
    config = folder / "med_config.json"
    for f in (checkpoint, config):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing (THUDM/ImageReward's file)")
    return RM.load(str(checkpoint), device=device, med_config=str(config))


def score(model, request: dict) -> float:
    import torch
    from PIL import Image

    with torch.no_grad():
        return float(model.score(request.get("text", ""), Image.open(request["image"])))


if __name__ == "__main__":
    sys.exit(serve(load, score))
