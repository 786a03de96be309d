"""BiSeNet face parsing: the official key layout, loading, the preprocessing and M_B's classes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from instantportrait.errors import InputError, ModelNotFoundError
from instantportrait.faces.parsing import (
    CELEBAMASK_CLASSES,
    FACE_CLASSES,
    BiSeNet,
    FaceParser,
    class_mask,
    load_bisenet,
    load_face_parser,
    preprocess,
    write_tiny_face_parser,
)

KEYS = Path(__file__).parent / "data" / "bisenet_official_keys.txt"
GOLDEN = Path(__file__).parent / "data" / "bisenet_official_golden.json"

TINY = {
    "block_out_channels": (8, 16, 32, 64),
    "context_channels": 16,
    "fusion_channels": 32,
    "head_channels": 16,
    "aux_head_channels": 8,
    "sample_size": 64,
}


def _official_layout() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split(" ", 1)
            rows.append((name, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return rows


@pytest.fixture(scope="module")
def tiny() -> BiSeNet:
    torch.manual_seed(0)
    model = BiSeNet(**TINY).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a lost buffer shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_default_config_has_the_official_keys_and_shapes():
    official = _official_layout()
    assert len(official) == 191
    ours = [(k, tuple(v.shape)) for k, v in BiSeNet().state_dict().items()]
    assert ours == official


def _formula_state(keys_shapes) -> dict[str, torch.Tensor]:
    """Deterministic weights for a key list: He-scaled convs, BatchNorm near identity."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, shape in keys_shapes:
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g)
            if len(shape) == 4:
                out[k] = t * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
            else:
                out[k] = 1.0 + 0.1 * t if k.endswith(".weight") else 0.1 * t
    return out


def test_forward_matches_the_official_code():
    """Our network against the official code's outputs (a fixture computed outside the repo,
    see its provenance) under the same formula weights, on a non-square input."""
    golden = json.loads(GOLDEN.read_text())
    model = BiSeNet().eval()
    model.load_state_dict(_formula_state(_official_layout()))
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        main, aux16, aux32 = model(x, return_aux=True)
    pool = torch.nn.functional.avg_pool2d
    for name, got in (
        ("main_pool8", pool(main, 8)),
        ("aux16_pool16", pool(aux16, 16)),
        ("aux32_pool16", pool(aux32, 16)),
    ):
        want = torch.tensor(golden[name])
        assert got.numel() == want.numel()
        assert torch.allclose(got.flatten(), want, rtol=1e-4, atol=2e-3), name
    counts = torch.bincount(main.argmax(1).flatten(), minlength=19).tolist()
    assert counts == golden["main_argmax_counts"]


def test_class_names_are_celebamask_hq_as_numbered_by_the_official_preprocessing():
    assert len(CELEBAMASK_CLASSES) == 19 and CELEBAMASK_CLASSES[0] == "background"
    names = [CELEBAMASK_CLASSES[c] for c in FACE_CLASSES]
    assert names[0] == "skin" and names[-1] == "l_lip" and "eye_g" in names
    assert not {"neck", "neck_l", "cloth", "hair", "hat"} & set(names)


def _labels_to_logits(labels: torch.Tensor, num_classes: int = 19) -> torch.Tensor:
    """Logits whose argmax is ``labels``: the label's class 3 above noise in [0, 1)."""
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(1, num_classes, *labels.shape, generator=g)
    return noise + 3.0 * torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1)[None]


def _hand_parse() -> tuple[torch.Tensor, np.ndarray]:
    """A 16x16 parse with known regions, and the face mask it must give (classes 1-13)."""
    labels = torch.zeros(16, 16, dtype=torch.long)  # background
    labels[:4, :] = 17  # hair on top
    labels[4:12, 3:13] = 1  # skin
    labels[6, 5:7], labels[6, 9:11] = 4, 5  # eyes
    labels[8, 7:9] = 10  # nose
    labels[10, 6:10] = 12  # upper lip
    labels[5, 2], labels[5, 13] = 7, 8  # ears
    labels[12:14, 5:11] = 14  # neck
    labels[14:, :] = 16  # cloth
    expected = np.zeros((16, 16), np.float32)
    expected[4:12, 3:13] = 1
    expected[5, 2] = expected[5, 13] = 1
    return labels, expected


def test_class_mask_is_exactly_the_face_classes():
    labels, expected = _hand_parse()
    logits = _labels_to_logits(labels)
    mask = class_mask(logits, FACE_CLASSES)[0].numpy()
    assert mask.dtype == np.float32 and np.array_equal(mask, expected)
    assert mask[:4].sum() == 0 and mask[12:].sum() == 0  # hair, neck, cloth excluded
    # another class list gives another mask: the hair/neck/cloth classes instead
    other = class_mask(logits, range(14, 19))[0].numpy()
    assert not np.array_equal(other, expected)
    assert np.array_equal(other, np.isin(labels.numpy(), [14, 16, 17]).astype(np.float32))


class _FixedLogits(nn.Module):
    """A stand-in parser network that returns the same logits for every input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.config = SimpleNamespace(num_classes=logits.shape[1], sample_size=logits.shape[-1])
        self.anchor = nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_face_parser_gives_the_class_union_at_the_crop_size():
    labels, expected = _hand_parse()
    net = _FixedLogits(_labels_to_logits(labels))
    parser = FaceParser(net)
    crop = Image.new("RGB", (16, 16), (120, 90, 60))
    mask = parser(crop, np.zeros((68, 2)))
    assert tuple(mask.shape) == (16, 16) and np.array_equal(mask.numpy(), expected)
    # the restorer's second call on the same crop reuses the parse
    parser(crop, np.zeros((68, 2)))
    assert len(net.seen) == 1
    big = parser(Image.new("RGB", (64, 64)), np.zeros((68, 2)))
    assert tuple(big.shape) == (64, 64)
    assert big[24:40, 20:44].min() == 1 and big[:12].max() == 0 and big[52:].max() == 0
    assert parser.take_notes() == []
    with pytest.raises(InputError, match="outside 0..18"):
        FaceParser(net, classes=[1, 19])


def _landmarks(c: float = 48.0, r: float = 24.0) -> np.ndarray:
    """Synthetic 68 landmarks: a jaw arc below the centre, brows above, the rest inside."""
    lm = np.full((68, 2), c)
    t = np.linspace(np.pi, 0.0, 17)
    lm[0:17] = np.stack([c + r * np.cos(t), c + r * np.sin(t)], axis=1)
    lm[17:27] = np.stack([np.linspace(c - 0.8 * r, c + 0.8 * r, 10), np.full(10, c - 0.3 * r)], 1)
    lm[27] = (c, c - 0.2 * r)
    return lm


def test_no_face_class_falls_back_to_the_landmark_mask_with_a_note():
    from instantportrait.faces.masks import face_mask

    net = _FixedLogits(_labels_to_logits(torch.zeros(16, 16, dtype=torch.long)))
    parser = FaceParser(net)
    lm = _landmarks()
    crop = Image.new("RGB", (96, 96))
    mask = parser(crop, lm)
    assert torch.equal(mask, face_mask(lm, (96, 96))[0, 0])
    assert mask.sum() > 0
    notes = parser.take_notes()
    assert len(notes) == 1 and "landmark face mask" in notes[0]
    assert parser.take_notes() == []
    strict = FaceParser(net, fallback=False)
    assert strict(crop, lm).sum() == 0


def test_preprocess_is_imagenet_normalisation_at_512():
    x = preprocess([Image.new("RGB", (40, 30), (255, 0, 128))])
    assert x.shape == (1, 3, 512, 512)
    by_hand = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert torch.allclose(x[0, :, 100, 200], torch.tensor(by_hand), atol=1e-6)


def test_save_pretrained_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "parser")
    loaded = load_bisenet(tmp_path / "parser")
    assert loaded.config.sample_size == 64
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny(x))
    out = loaded(x)
    assert out.shape == (1, 19, 64, 64)


def test_a_torch_saved_state_dict_loads(tiny, tmp_path):
    path = tmp_path / "79999_iter.pth"
    torch.save(tiny.state_dict(), path)
    loaded = load_bisenet(path)
    assert tuple(loaded.config.block_out_channels) == TINY["block_out_channels"]
    assert loaded.config.sample_size == 512  # a bare state dict: the official input size
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        a, a16, a32 = loaded(x, return_aux=True)
        assert torch.equal(a, tiny(x)) and a16.shape == a32.shape == (2, 19, 64, 48)
    # a DDP-prefixed copy loads too
    torch.save({f"module.{k}": v for k, v in tiny.state_dict().items()}, tmp_path / "ddp.pth")
    assert load_bisenet(tmp_path / "ddp.pth").config.num_classes == 19


def test_load_failures_are_one_clear_line(tiny, tmp_path):
    with pytest.raises(ModelNotFoundError, match="79999_iter.pth"):
        load_face_parser(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_face_parser(tmp_path / "empty")
    sd = tiny.state_dict()
    renamed = {k.replace("cp.arm16.", "cp.arm_16."): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(InputError, match="no key cp.arm16.conv.conv.weight"):
        load_face_parser(tmp_path / "renamed.pth")
    renamed = {k.replace("ffm.conv1.", "ffm.conv_1."): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed2.pth")
    with pytest.raises(InputError, match=r"missing keys \(e.g. ffm.conv1.weight\)"):
        load_face_parser(tmp_path / "renamed2.pth")
    bad = dict(sd)
    bad["ffm.conv2.weight"] = torch.zeros(5, 5, 1, 1)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(InputError, match="shape mismatches .*ffm.conv2.weight"):
        load_face_parser(tmp_path / "shape.pth")
    torch.save({"w": SimpleNamespace(a=1)}, tmp_path / "pickle.pth")
    with pytest.raises(InputError, match="cannot read face-parser weights"):
        load_face_parser(tmp_path / "pickle.pth")


def test_tiny_kind_loads_through_the_loader(tmp_path):
    from instantportrait.tiny import write_tiny

    folder = write_tiny(tmp_path / "fp", "face-parser")
    parser = load_face_parser(folder)
    assert parser.classes == FACE_CLASSES and parser.model.config.sample_size == 64
    direct = tmp_path / "direct"
    direct.mkdir()
    write_tiny_face_parser(direct, seed=0)
    a = load_bisenet(folder).state_dict()
    b = load_bisenet(direct).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    crop = Image.new("RGB", (48, 48), (200, 150, 120))
    m = parser(crop, np.zeros((68, 2)))
    assert m.shape == (48, 48) and float(m.min()) >= 0 and float(m.max()) <= 1
