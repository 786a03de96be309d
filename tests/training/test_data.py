"""The pair dataset: both storages agree, bad rows are named, augmentation is deterministic."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from instantportrait.cli import main
from instantportrait.data.dataset import ConditioningDropout, PairDataset, collate_pairs
from instantportrait.data.pairs import check_dataset, open_pair_source, pack_shards
from instantportrait.errors import InputError
from instantportrait.training.sampler import ResumableSampler


def test_manifest_and_shards_give_the_same_examples(pair_dir, tmp_path):
    shards = pack_shards(pair_dir, tmp_path / "shards", shard_size=3)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    manifest, sharded = open_pair_source(pair_dir), open_pair_source(tmp_path / "shards")
    assert len(manifest) == len(sharded) == 4
    for i in range(4):
        a, b = manifest[i], sharded[i]
        assert (a.instruction, a.input_bytes, a.target_bytes) == (
            b.instruction,
            b.input_bytes,
            b.target_bytes,
        )
        assert a.landmarks == b.landmarks
    da = PairDataset(manifest, resolution=64, seed=3)
    db = PairDataset(sharded, resolution=64, seed=3)
    for i in range(4):
        x, y = da[(1, i)], db[(1, i)]
        assert torch.equal(x["input"], y["input"]) and torch.equal(x["target"], y["target"])
        assert x["instruction"] == y["instruction"] and torch.equal(x["landmarks"], y["landmarks"])


def test_items_are_deterministic_and_epochs_differ(pair_dir):
    ds = PairDataset(open_pair_source(pair_dir), resolution=64, seed=0, crop_jitter=0.2)
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert torch.equal(a["input"], b["input"])
    assert a["input"].shape == (3, 64, 64) and a["input"].min() >= -1 and a["input"].max() <= 1
    differs = [not torch.equal(ds[(e, 1)]["input"], a["input"]) for e in range(1, 6)]
    assert any(differs)


def test_flip_moves_landmarks_with_the_face(pair_dir):
    src = open_pair_source(pair_dir)
    if src[0].landmarks is None:
        pytest.skip("dlib not installed: no landmarks in the test dataset")
    plain = PairDataset(src, resolution=128, random_flip=False, seed=0)[(0, 0)]
    flipped = None
    ds = PairDataset(src, resolution=128, random_flip=True, seed=0)
    for epoch in range(20):
        item = ds[(epoch, 0)]
        if not torch.equal(item["input"], plain["input"]):
            flipped = item
            break
    assert flipped is not None
    assert torch.equal(flipped["input"], plain["input"].flip(-1))
    lm, lf = plain["landmarks"], flipped["landmarks"]
    # eyes swap: the image-right eye (points 0-1) becomes the image-left one (2-3)
    torch.testing.assert_close(lf[0, 0], 127 - lm[2, 0])
    torch.testing.assert_close(lf[4], torch.stack([127 - lm[4, 0], lm[4, 1]]))
    assert lf[0, 0] > lf[2, 0]


def test_conditioning_dropout_fractions():
    d = ConditioningDropout(0.05, 0.05, 0.05)
    draws = [d.draw(u) for u in np.linspace(0, 1, 10000, endpoint=False)]
    text_only = sum(t and not i for t, i in draws) / len(draws)
    both = sum(t and i for t, i in draws) / len(draws)
    image_only = sum(i and not t for t, i in draws) / len(draws)
    assert (text_only, both, image_only) == pytest.approx((0.05, 0.05, 0.05), abs=1e-3)
    with pytest.raises(InputError):
        ConditioningDropout(0.5, 0.5, 0.5)


def test_dropped_text_is_empty_and_batches_collate(pair_dir):
    ds = PairDataset(
        open_pair_source(pair_dir), resolution=64, dropout=ConditioningDropout(1.0, 0.0, 0.0)
    )
    batch = collate_pairs([ds[i] for i in range(3)])
    assert batch["instruction"] == ["", "", ""] and batch["input"].shape == (3, 3, 64, 64)
    assert not batch["drop_image"].any()


def test_sampler_ranks_are_disjoint_and_resume_continues():
    full = ResumableSampler(10, batch_size=2, seed=1)
    seq = [b for _, (_, _, b) in zip(range(12), full.batches())]
    assert sorted(sum(seq[:5], [])) == list(range(10))  # one epoch covers every example once
    resumed = ResumableSampler(10, batch_size=2, seed=1, start=(1, 2))
    tail = [b for _, (_, _, b) in zip(range(5), resumed.batches())]
    assert tail == seq[7:12]
    r0 = ResumableSampler(10, 2, rank=0, world_size=2, seed=1)
    r1 = ResumableSampler(10, 2, rank=1, world_size=2, seed=1)
    a = [b for _, (_, _, b) in zip(range(2), r0.batches())]
    b = [b for _, (_, _, b) in zip(range(2), r1.batches())]
    assert not set(sum(a, [])) & set(sum(b, []))


def corrupt_copy(pair_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(pair_dir, bad)
    (bad / "inputs" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return bad


def test_data_check_reports_bad_rows_without_stopping(pair_dir, tmp_path, capsys):
    bad = corrupt_copy(pair_dir, tmp_path)
    report = check_dataset(bad)
    assert report.total == 4 and report.ok == 3 and len(report.bad) == 1
    assert "pairs.jsonl:3" in report.bad[0] and "p2" in report.bad[0]
    assert main(["data", "check", str(bad)]) == 2
    out = capsys.readouterr()
    assert "4 pairs, 3 good, 1 bad" in out.out and "pairs.jsonl:3" in out.err
    assert main(["data", "check", str(pair_dir)]) == 0


def test_dataset_names_the_row_of_a_corrupt_image(pair_dir, tmp_path):
    ds = PairDataset(open_pair_source(corrupt_copy(pair_dir, tmp_path)), resolution=64)
    with pytest.raises(InputError, match=r"pairs.jsonl:3 \(key p2\)"):
        ds[2]


def test_manifest_errors_are_one_line(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"input": "a.png", "instruction": ""}) + "\n")
    with pytest.raises(InputError, match="pairs.jsonl:1: empty 'instruction'; missing 'target'"):
        open_pair_source(tmp_path)
    (tmp_path / "pairs.jsonl").write_text(
        '{"input": "../../etc/x.png", "instruction": "a", "target": "t.png"}\n'
    )
    with pytest.raises(InputError, match="leaves the dataset folder"):
        open_pair_source(tmp_path)[0]


def test_data_pack_cli(pair_dir, tmp_path, capsys):
    assert main(["data", "pack", str(pair_dir), str(tmp_path / "s"), "--shard-size", "2"]) == 0
    assert len(capsys.readouterr().out.split()) == 2
    assert main(["data", "check", str(tmp_path / "s")]) == 0


def dot_pairs(root, size=(300, 200), point=(150.0, 100.0)):
    """One pair: a black image with a white 5x5 dot centred on landmark 0."""
    from PIL import Image

    root.mkdir(parents=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    x, y = int(point[0]), int(point[1])
    arr[y - 2 : y + 3, x - 2 : x + 3] = 255
    Image.fromarray(arr).save(root / "in.png")
    Image.fromarray(arr).save(root / "tg.png")
    lm = [list(point), [120.0, 100.0], [180.0, 100.0], [190.0, 100.0], [150.0, 130.0]]
    row = {"input": "in.png", "target": "tg.png", "instruction": "x", "landmarks": lm}
    (root / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    return root


def dot_centre(image: torch.Tensor) -> tuple[float, float]:
    w = (image.mean(0) + 1).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(w.shape[0]), torch.arange(w.shape[1]), indexing="ij")
    return float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())


def test_non_square_size_crops_resizes_and_flips_landmarks_with_the_image(tmp_path):
    src = open_pair_source(dot_pairs(tmp_path / "dot"))
    # 300x200 -> centred crop of aspect 48:64 is 150x200 at x = 75; scale 48 / 150 = 0.32
    expected = ((150 - 75) * 0.32, 100 * 0.32)  # (24, 32), by hand
    ds = PairDataset(src, size=(48, 64), random_flip=False, dropout=ConditioningDropout(0, 0, 0))
    item = ds[(0, 0)]
    assert item["input"].shape == (3, 64, 48) and item["has_face"]
    torch.testing.assert_close(item["landmarks"][0], torch.tensor(expected))
    cx, cy = dot_centre(item["input"])
    assert abs(cx - expected[0]) < 1.0 and abs(cy - expected[1]) < 1.0  # the dot is there
    flips = PairDataset(src, size=(48, 64), random_flip=True)
    flipped = next(
        flips[(e, 0)]
        for e in range(30)
        if not torch.equal(flips[(e, 0)]["input"], ds[(0, 0)]["input"])
    )
    # landmark 0 (an eye corner) is now point 2 (eyes swap) at x' = 47 - x
    torch.testing.assert_close(flipped["landmarks"][2], torch.tensor([47 - expected[0], 32.0]))
    cx, cy = dot_centre(flipped["input"])
    assert abs(cx - (47 - expected[0])) < 1.0 and abs(cy - expected[1]) < 1.0
    batch = collate_pairs([item, flipped])
    assert batch["input"].shape == (2, 3, 64, 48)


def test_zero_landmarks_mean_no_face(tmp_path):
    root = dot_pairs(tmp_path / "zero")
    row = json.loads((root / "pairs.jsonl").read_text())
    row["landmarks"] = [[0.0, 0.0]] * 5
    (root / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    item = PairDataset(open_pair_source(root), resolution=64)[(0, 0)]
    assert not item["has_face"] and float(item["landmarks"].abs().sum()) == 0.0


def test_count_faces_uses_given_landmarks_and_the_detector(pair_dir, pair_dir_no_landmarks):
    from instantportrait.data.dataset import count_faces

    def never(image):
        raise AssertionError("the detector runs only on rows without landmarks")

    given = count_faces(open_pair_source(pair_dir), landmark_fn=never, progress=False)
    if given.given != 4:
        pytest.skip("dlib not installed: no landmarks in the test dataset")
    assert given.faceless == [] and given.total == 4
    bare = open_pair_source(pair_dir_no_landmarks)
    calls = []

    def half(image):  # a stand-in detector: a face in the 1st and 3rd image only
        calls.append(image.size)
        return None if len(calls) % 2 == 0 else np.zeros((5, 2), np.float32) + 10

    counted = count_faces(bare, resolution=32, landmark_fn=half, progress=False)
    assert calls == [(32, 32)] * 4  # detected at the training resolution
    assert (counted.detected, counted.faceless) == (2, ["p1", "p3"])
    assert "2 of 4 inputs show no face" in counted.summary()
