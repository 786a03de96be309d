"""Grounding-DINO as the optional mask provider: part assignment by hand, and the loading and
masking path on a tiny random Grounding-DINO saved in the transformers format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.data.grounding_boxes import GroundingDinoBoxes, assign_parts
from instantportrait.errors import ModelNotFoundError


def test_parts_are_assigned_inside_the_face_and_eyes_by_x():
    face = np.array([[100, 100, 200, 220]], dtype=float)
    eyes = np.array(
        [
            [120, 140, 140, 150],  # image-left eye: the subject's right
            [160, 140, 180, 150],  # image-right eye: the subject's left
            [10, 10, 20, 20],  # outside the face: ignored
        ],
        dtype=float,
    )
    found = {
        "face": (face, np.array([0.9])),
        "eye": (eyes, np.array([0.5, 0.6, 0.99])),
        "nose": (np.array([[140, 150, 160, 180]], dtype=float), np.array([0.7])),
        "mouth": (np.zeros((0, 4)), np.zeros(0)),
    }
    parts = assign_parts(found)
    assert parts["left_eye"].tolist() == [160, 140, 180, 150]
    assert parts["right_eye"].tolist() == [120, 140, 140, 150]
    assert parts["nose"].tolist() == [140, 150, 160, 180]
    assert parts["mouth"] is None and parts["face"].tolist() == face[0].tolist()
    # one eye only: its side of the face centre decides
    found["eye"] = (eyes[:1], np.array([0.5]))
    one = assign_parts(found)
    assert one["right_eye"] is not None and one["left_eye"] is None


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino import GroundingDinoImageProcessorPil

    root = tmp_path_factory.mktemp("gdino")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "face", "eye", "nose", "mouth", "."]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(
            size={"shortest_edge": 128, "longest_edge": 128}
        ),
        tokenizer=BertTokenizer(str(root / "vocab.txt")),
    )
    torch.manual_seed(0)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            image_size=128,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=64,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        num_queries=8,
        max_text_len=32,
        encoder_n_points=1,
        decoder_n_points=1,
    )
    path = root / "model"
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_grounding_dino_masks_through_the_trainer(tiny_grounding_dino, trainer_factory, tmp_path):
    from instantportrait.training.faceanet_data import prepare_crops

    det = GroundingDinoBoxes(tiny_grounding_dino, box_threshold=0.0, text_threshold=0.0)
    image = Image.new("RGB", (96, 80), (128, 100, 90))
    boxes = det.boxes(image)
    assert set(boxes) == {"face", "left_eye", "right_eye", "nose", "mouth"}
    assert boxes["face"] is not None and boxes["face"][2] <= 96 + 1e-3
    tr = trainer_factory(
        tmp_path / "r",
        data={"mask_source": "grounding-dino", "grounding_dino": str(tiny_grounding_dino)},
    )
    _, masks, _ = prepare_crops(tr.cfg.data)
    assert masks[0].shape == (5, 1, 64, 64)
    assert set(torch.unique(masks[0]).tolist()) <= {0.0, 1.0}
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        GroundingDinoBoxes(tmp_path / "missing")
