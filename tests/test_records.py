"""Output records (records.json) and the one seed rule of every generating command."""

from __future__ import annotations

import json

import pytest

from instantportrait.errors import InputError
from instantportrait.pipelines.fastface_presets import FastFacePreset
from instantportrait.records import (
    FORMAT,
    OutputRecords,
    image_seed,
    plan_images,
    read_records,
    record_value,
)


def test_seed_rule_counts_images_across_prompts():
    # seed 10, 3 images per prompt: prompt 0 -> 10, 11, 12; prompt 1 -> 13, 14, 15; ...
    assert image_seed(10, 0, 0, 3) == 10
    assert image_seed(10, 1, 0, 3) == 13
    assert image_seed(10, 2, 2, 3) == 18
    with pytest.raises(ValueError):
        image_seed(10, 0, 3, 3)  # no 4th image of 3
    plan = plan_images(["a", "b"], 2, 5)
    # FaceA-Net used seed + k: (5, 6, 5, 6), repeating seeds across prompts
    assert [(p.prompt, p.seed, p.index) for p in plan] == [
        ("a", 5, 0),
        ("a", 6, 1),
        ("b", 7, 2),
        ("b", 8, 3),
    ]


def test_records_round_trip_and_each_record_is_complete(tmp_path):
    records = OutputRecords(
        tmp_path, command="generate", method="fpga", settings={"steps": 2}, models={"model": "m"}
    )
    (tmp_path / "0000.png").write_bytes(b"x")
    records.add("0000.png", prompt="a", seed=3, size=(64, 48), face_found=True)
    data = json.loads((tmp_path / "records.json").read_text())
    assert data["format"] == FORMAT
    assert data["outputs"]["0000.png"] == {
        "command": "generate",
        "method": "fpga",
        "prompt": "a",
        "seed": 3,
        "settings": {"steps": 2},
        "models": {"model": "m"},
        "width": 64,
        "height": 48,
        "face_found": True,
    }
    assert read_records(tmp_path) == data["outputs"]
    assert not list(tmp_path.glob(".records.json.*"))  # written through a temporary file


def test_is_done_keeps_only_what_was_made_as_asked(tmp_path):
    def records(**settings):
        return OutputRecords(tmp_path, command="generate", method="fastface", settings=settings)

    first = records(steps=4)
    (tmp_path / "a.png").write_bytes(b"x")
    first.add("a.png", prompt="p", seed=0)
    (tmp_path / "b.png").write_bytes(b"x")  # saved, then interrupted before its record

    again = records(steps=4)
    assert again.is_done("a.png", prompt="p", seed=0)
    assert not again.is_done("b.png", prompt="p", seed=1)  # no record: make it again
    assert not again.is_done("c.png", prompt="p", seed=2)  # not there
    with pytest.raises(InputError, match="another prompt"):
        again.is_done("a.png", prompt="q", seed=0)
    with pytest.raises(InputError, match="another seed"):
        again.is_done("a.png", prompt="p", seed=1)
    with pytest.raises(InputError, match="another settings"):
        records(steps=8).is_done("a.png", prompt="p", seed=0)
    with pytest.raises(InputError, match="another input"):
        first.add("e.png", prompt="p", seed=0, input="x.png")
        (tmp_path / "e.png").write_bytes(b"x")
        records(steps=4).is_done("e.png", prompt="p", seed=0, input="y.png")


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "other/1", "outputs": {}}'])
def test_a_foreign_records_file_is_one_clear_error(tmp_path, text):
    (tmp_path / "records.json").write_text(text)
    with pytest.raises(InputError, match="records.json: not a records file"):
        read_records(tmp_path)
    # an output about to be replaced (--overwrite) does not read its old records
    assert len(OutputRecords(tmp_path, command="generate", fresh=True)) == 0


def test_a_custom_preset_is_recorded_by_its_values():
    preset = FastFacePreset.from_dict({"am": {"kind": "scale_power", "power": 3.5}}, "mine")
    value = record_value({"preset": preset, "dtype": "torch.float32", "sizes": (1, 2)})
    assert value["preset"]["name"] == "mine"
    assert value["preset"]["am"]["power"] == 3.5 and value["preset"]["am"]["kind"] == "scale_power"
    assert value["sizes"] == [1, 2]
    json.dumps(value)  # plain JSON
