"""`data check --faces` counts faces with the detector chosen by `--detector` (as training
does with the same `data.detector`), says which, and answers a wrong model file in one line
before reading any row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instantportrait.cli import main
from instantportrait.faces.model_files import has_dlib


@pytest.fixture
def dataset(tmp_path, grace_hopper_path, astronaut_path):
    """Three pairs without landmarks: Grace Hopper, a plain grey square, the astronaut."""
    root = tmp_path / "pairs"
    root.mkdir()
    inputs = [
        Image.open(grace_hopper_path).convert("RGB"),
        Image.new("RGB", (256, 256), (128, 128, 128)),
        Image.open(astronaut_path).convert("RGB"),
    ]
    rows = []
    for i, image in enumerate(inputs):
        image.save(root / f"in{i}.png")
        image.save(root / f"tg{i}.png")
        rows.append({"input": f"in{i}.png", "instruction": "x", "target": f"tg{i}.png"})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def check(args, capsys) -> tuple[int, str, str]:
    code = main(["data", "check", *map(str, args)])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_the_chosen_detector_counts_and_is_reported(dataset, tmp_path, monkeypatch, capsys):
    import instantportrait.data.dataset as dataset_module
    from instantportrait.faces.mtcnn import MTCNN_WEIGHTS

    weights = tmp_path / "mtcnn copy.safetensors"  # an explicit file, not the shipped path
    weights.write_bytes(MTCNN_WEIGHTS.read_bytes())
    chosen, sizes = [], []

    def recording(detector):
        chosen.append(detector)

        def find(image):  # a face in the first input only
            sizes.append(image.size)
            return np.ones((5, 2), np.float32) if len(sizes) == 1 else None

        return find

    monkeypatch.setattr(dataset_module, "detect_face_points", recording)
    args = [dataset, "--faces", "--detector", "mtcnn", "--detector-weights", weights]
    code, out, _ = check([*args, "--resolution", "128"], capsys)
    assert code == 0
    assert [(c.name, c.weights) for c in chosen] == [("mtcnn", weights)]
    assert len(sizes) == 3 and max(sizes[0]) == 128  # every input, at --resolution
    assert "2 of 3 inputs show no face (66.7%) with detector mtcnn (" in out
    assert str(weights) in out


def test_mtcnn_runs_and_hog_stays_the_default(dataset, monkeypatch, capsys):
    import importlib

    detect_module = importlib.import_module("instantportrait.faces.detect")  # not faces.detect()
    real, used = detect_module.detect, []

    def spy(image, method=None, **kwargs):
        used.append(method.name)
        return real(image, method=method, **kwargs)

    monkeypatch.setattr(detect_module, "detect", spy)
    code, out, _ = check([dataset, "--faces", "--detector", "mtcnn", "--resolution", "256"], capsys)
    assert code == 0 and used == ["mtcnn"] * 3
    assert "1 of 3 inputs show no face (33.3%) with detector mtcnn:" in out  # the grey square
    if not has_dlib():
        pytest.skip("dlib not installed: the default (hog) cannot run")
    used.clear()
    code, out, _ = check([dataset, "--faces", "--resolution", "256"], capsys)
    assert code == 0 and used == ["hog"] * 3 and "(33.3%) with detector hog:" in out


@pytest.mark.parametrize(
    ("detector", "weights", "says"),
    [("mtcnn", "missing.safetensors", "mtcnn detector model not found"),
     ("mtcnn", "junk.safetensors", "cannot read MTCNN weights"),
     ("mmod", "junk.dat", "not a dlib MMOD detector model")],
)  # fmt: skip
def test_a_wrong_detector_model_is_one_line_before_any_row(
    dataset, tmp_path, detector, weights, says, capsys
):
    if detector == "mmod" and not has_dlib():
        pytest.skip("dlib not installed")
    for junk in ("junk.safetensors", "junk.dat"):
        (tmp_path / junk).write_text("not a model")
    args = [dataset, "--faces", "--detector", detector, "--detector-weights", tmp_path / weights]
    code, out, err = check(args, capsys)
    assert code == 2 and out == ""  # no row was checked
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_detector_options_need_faces(dataset, capsys):
    code, out, err = check([dataset, "--detector", "mtcnn"], capsys)
    assert code == 2 and out == "" and "only with --faces" in err and err.count("\n") == 1
