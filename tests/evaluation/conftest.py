"""Fixtures of the evaluation tests: tiny random CLIP / DINOv2 / LPIPS models, small images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image


@pytest.fixture(scope="session")
def tiny_clip():
    """A random 1-layer CLIPModel (32-wide towers, 32 px images, 16-D projections)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tiny_clip):
    """The tiny CLIP saved as a transformers folder (safetensors), loadable by path."""
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    tiny_clip.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from instantportrait.components import clip_tokenizer

    return clip_tokenizer()


@pytest.fixture(scope="session")
def tiny_dino():
    from instantportrait.faces.dino import DinoFeatureExtractor

    return DinoFeatureExtractor.from_config(seed=0).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_lpips():
    from instantportrait.evaluation.lpips import LPIPS

    return LPIPS.tiny(seed=0)


@pytest.fixture(scope="session")
def lpips_alex_dir(tmp_path_factory):
    """Random AlexNet LPIPS weights in the published layout: torchvision's ``features.*`` in one
    .pth, the lpips heads ``lin{k}.model.1.weight`` in another."""
    from instantportrait.evaluation.lpips import LPIPS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = LPIPS("alex")
    folder = tmp_path_factory.mktemp("lpips")
    sd = net.state_dict()
    torch.save({k: v for k, v in sd.items() if k.startswith("features.")}, folder / "alexnet.pth")
    heads = {
        f"lin{k.split('.')[1]}.{k.split('.', 2)[2]}": v.abs()
        for k, v in sd.items()
        if k.startswith("lins.")
    }
    torch.save(heads, folder / "alex.pth")
    return folder


@pytest.fixture(scope="session")
def portraits(astronaut_path, grace_hopper_path):
    """The two bundled portraits as PIL RGB images."""
    with Image.open(astronaut_path) as a, Image.open(grace_hopper_path) as g:
        return a.convert("RGB"), g.convert("RGB")


def _rand_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def rand_images():
    """``rand_images(n, size, seed)``: ``(n, 3, size, size)`` uniform images in [0, 1]."""
    return _rand_images
