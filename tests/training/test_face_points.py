"""The trainers crop faces from a row's detector keypoints (SCRFD / MTCNN) when it has them,
from dlib's 5 landmarks otherwise, exactly as before; `train idenet --set data.detector=mtcnn`
detects keypoints on the fly."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main
from instantportrait.data.dataset import PairDataset, collate_pairs, count_faces
from instantportrait.data.pairs import open_pair_source, pack_shards
from instantportrait.errors import InputError
from instantportrait.faces.align import crop_faces, norm_crop
from instantportrait.training.idenet import IDENetTrainer
from instantportrait.training.ipnet import IPNetTrainer
from instantportrait.training.logger import read_metrics

# MTCNN's five keypoints of the astronaut at 256 px (eye centres left then right, nose tip,
# mouth corners), and points in dlib's 5-point order a few pixels off (outer/inner corners of
# the image-right eye, then of the image-left eye, the base of the nose): two different sets
KEYPOINTS = [[102.7, 50.9], [124.0, 52.5], [113.1, 64.4], [101.7, 70.6], [122.8, 71.7]]
DLIB5 = [[131.0, 52.0], [121.0, 52.5], [96.0, 51.0], [106.0, 51.5], [113.5, 63.0]]


def write_rows(root, image, rows):
    root.mkdir(parents=True)
    image.save(root / "in.png")
    image.save(root / "tg.png")
    base = {"input": "in.png", "target": "tg.png", "instruction": "as a sketch"}
    text = "\n".join(json.dumps({**base, "key": f"r{i}", **r}) for i, r in enumerate(rows))
    (root / "pairs.jsonl").write_text(text + "\n")
    return root


@pytest.fixture(scope="module")
def astronaut(astronaut_path):
    return Image.open(astronaut_path).convert("RGB").resize((256, 256))


@pytest.fixture
def rows(tmp_path, astronaut):
    """Row 0: dlib landmarks and keypoints; row 1: dlib landmarks only (an old row)."""
    return write_rows(
        tmp_path / "rows",
        astronaut,
        [{"landmarks": DLIB5, "keypoints": KEYPOINTS}, {"landmarks": DLIB5}],
    )


class Recorder(torch.nn.Module):
    """A stand-in embedder / DINO that records the crops it is given."""

    template, input_size = "arcface", 112

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def embed(self, crops):
        self.seen.append(crops.detach().clone())
        return crops.flatten(1)[:, :8]

    forward = embed


def idenet_crops(batch, is_keypoints, window=False):
    """The (input, predicted) crops IDE-Net's identity term takes (its own code, stand-in
    parts: the 'latents' are the images and the decoder is the identity, factor 1)."""
    emb = Recorder()
    loss = SimpleNamespace(
        grayscale=False,
        face_window=window,
        window_margin=2.0,
        t_max=999,
        weighting="linear",
        a=1,
        b=0,
        alpha=1,
    )
    fake = SimpleNamespace(
        cfg=SimpleNamespace(loss=loss),
        embedder=emb,
        device="cpu",
        decode=lambda z: z,
        vae=SimpleNamespace(config=SimpleNamespace(block_out_channels=[32])),
    )
    x = batch["input"]
    IDENetTrainer.identity_term(fake, x, x, batch["landmarks"], torch.zeros(len(x)), is_keypoints)
    if window:
        return emb.seen
    return emb.seen[0]


def reference_crop(image: Image.Image, points) -> torch.Tensor:
    """insightface's norm_crop of the image at ``points``, as [0, 1] (1, 3, 112, 112)."""
    crop = norm_crop(np.asarray(image), np.asarray(points, np.float64), 112)
    return torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1)[None]


def test_a_row_with_keypoints_is_cropped_at_them_an_old_row_as_before(rows, astronaut):
    ds = PairDataset(open_pair_source(rows), resolution=256, random_flip=False)
    batch = collate_pairs([ds[(0, 0)], ds[(0, 1)]])
    assert batch["is_keypoints"].tolist() == [True, False]
    torch.testing.assert_close(batch["landmarks"][0], torch.tensor(KEYPOINTS))
    torch.testing.assert_close(batch["landmarks"][1], torch.tensor(DLIB5))

    crops = idenet_crops(batch, batch["is_keypoints"])
    # the keypoint row: insightface's crop at those keypoints (bilinear both, no antialias at
    # this scale), far from the crop at the dlib points
    ref = reference_crop(astronaut, KEYPOINTS)
    assert (crops[0] - ref[0]).abs().mean() < 0.01
    assert (reference_crop(astronaut, DLIB5)[0] - ref[0]).abs().mean() > 0.05
    # the old row: exactly the crop of the code before keypoints (dlib's 5, no points argument)
    x = batch["input"] / 2 + 0.5
    old = crop_faces(x[1:], batch["landmarks"][1:], "arcface", 112)
    assert torch.equal(crops[1:], old)
    # a batch without the flag (another producer) is the old crop too
    assert torch.equal(idenet_crops(batch, None)[1:], old)


def test_the_face_window_crops_the_keypoint_row_at_its_keypoints(rows):
    """With loss.face_window the predicted face is cropped from a window around the points,
    shifted by the window's corner: the same crop as from the whole image, for both kinds."""
    ds = PairDataset(open_pair_source(rows), resolution=256, random_flip=False)
    batch = collate_pairs([ds[(0, 0)], ds[(0, 1)]])
    ref, hat = idenet_crops(batch, batch["is_keypoints"], window=True)
    torch.testing.assert_close(hat, ref, atol=1e-4, rtol=0)
    assert torch.equal(ref, idenet_crops(batch, batch["is_keypoints"]))


def test_ipnet_face_crops_follow_the_rows_points(rows, astronaut):
    ds = PairDataset(open_pair_source(rows), resolution=256, random_flip=False)
    batch = collate_pairs([ds[(0, 0)], ds[(0, 1)]])
    dino = Recorder()
    fake = SimpleNamespace(
        cfg=SimpleNamespace(triplet=SimpleNamespace(template="arcface", crop_size=112)), dino=dino
    )
    IPNetTrainer.face_features(fake, batch["input"], batch["landmarks"], batch["is_keypoints"])
    (crops,) = dino.seen
    assert (crops[0] - reference_crop(astronaut, KEYPOINTS)[0]).abs().mean() < 0.01
    x = batch["input"] / 2 + 0.5
    assert torch.equal(crops[1:], crop_faces(x[1:], batch["landmarks"][1:], "arcface", 112))


def test_flip_swaps_the_eye_centres_and_the_mouth_corners(rows):
    ds = PairDataset(open_pair_source(rows), resolution=256, random_flip=True)
    plain = torch.tensor(KEYPOINTS)
    flipped = next(
        item for epoch in range(30) if not torch.equal((item := ds[(epoch, 0)])["landmarks"], plain)
    )
    expected = torch.tensor(
        [[255 - 124.0, 52.5], [255 - 102.7, 50.9], [255 - 113.1, 64.4]]
        + [[255 - 122.8, 71.7], [255 - 101.7, 70.6]]
    )
    torch.testing.assert_close(flipped["landmarks"], expected)
    assert flipped["is_keypoints"]


def test_keypoints_are_checked_counted_and_packed(tmp_path, rows, astronaut):
    bad = write_rows(tmp_path / "bad", astronaut, [{"keypoints": KEYPOINTS[:4]}])
    with pytest.raises(InputError, match="'keypoints' must be 5"):
        open_pair_source(bad)
    only = write_rows(tmp_path / "only", astronaut, [{"keypoints": KEYPOINTS}])

    def never(image):
        raise AssertionError("a row with keypoints needs no detection")

    assert count_faces(open_pair_source(only), landmark_fn=never, progress=False).given == 1
    pack_shards(rows, tmp_path / "shards")
    shards = open_pair_source(tmp_path / "shards")
    assert shards[0].keypoints == KEYPOINTS and shards[0].landmarks == DLIB5
    assert shards[1].keypoints is None and "keypoints" not in shards[0].extra


def test_mixed_points_crop_each_row_as_its_own_kind(astronaut):
    x = torch.from_numpy(np.asarray(astronaut, np.float32) / 255).permute(2, 0, 1)[None]
    x = x.expand(3, -1, -1, -1)
    lm = torch.tensor([KEYPOINTS, DLIB5, KEYPOINTS])
    mixed = crop_faces(x, lm, "arcface", 112, points=torch.tensor([True, False, True]))
    torch.testing.assert_close(
        mixed[0], crop_faces(x[:1], lm[:1], "arcface", 112, points="keypoints")[0]
    )
    torch.testing.assert_close(mixed[1], crop_faces(x[:1], lm[1:2], "arcface", 112)[0])


def test_cli_trains_idenet_on_mtcnn_keypoints(pair_dir_no_landmarks, tmp_path, capsys, monkeypatch):
    pytest.importorskip("dlib")
    import instantportrait.faces.align as align

    seen = []
    real = align.crop_faces

    def spy(*args, **kwargs):
        seen.append(kwargs.get("points"))
        return real(*args, **kwargs)

    monkeypatch.setattr(align, "crop_faces", spy)
    out = tmp_path / "run"
    args = ["train", "idenet", "--set", "model.pretrained=tiny"]
    for s in (
        f"data.path={pair_dir_no_landmarks}",
        "data.resolution=128",
        "data.detector=mtcnn",
        "data.random_flip=false",
        "data.dropout_image=0",
        "data.dropout_both=0",
        "loss.embedder=dlib",
        "training.max_steps=2",
        "training.batch_size=2",
        "training.tensorboard=false",
        "training.log_every=1",
        "training.mixed_precision=no",
        "training.num_workers=0",
        "training.validate_every=0",
        f"training.output_dir={out}",
    ):
        args += ["--set", s]
    code = main(args)
    assert code == 0, capsys.readouterr().err
    # every identity crop took MTCNN's keypoints (the inputs carry no landmarks)
    assert seen and all(isinstance(p, torch.Tensor) and bool(p.all()) for p in seen)
    assert any(r.get("l_cid", 0) > 0 for r in read_metrics(out))  # the identity term ran
