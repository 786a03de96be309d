"""The item model: subjects from image folders, identity folders and subjects files; their
fingerprints; the CLI's dry run over a multi-identity subjects file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instantportrait.cli import main
from instantportrait.errors import InputError
from instantportrait.evaluation.items import load_subjects, subjects_from_files


def _img(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_image_folders_and_identity_folders(tmp_path):
    flat = tmp_path / "flat"
    a, b = _img(flat / "a.png", 0), _img(flat / "b.jpg", 1)
    subjects = subjects_from_files([flat])
    assert [s.name for s in subjects] == ["a", "b"]
    assert subjects[0].input == a and subjects[0].reference_photos() == (a,)
    assert subjects[1].identities[0].face_references() == (b,)

    ids = tmp_path / "ids"
    t = [_img(ids / "alice" / "tuning" / f"{i}.png", i) for i in range(3)]
    held = _img(ids / "alice" / "reference" / "h.png", 9)
    _img(ids / "bob" / "1.png", 5)
    alice, bob = subjects_from_files([ids])
    assert alice.identities[0].photos == tuple(t) and alice.identities[0].references == (held,)
    assert alice.reference_photos() == (held,) and alice.input == t[0]
    assert bob.identities[0].references == () and bob.reference_photos() == (bob.input,)


def test_subjects_file_with_several_identities_a_condition_and_references(tmp_path):
    files = {n: _img(tmp_path / f"{n}.png", i) for i, n in enumerate(["a1", "a2", "b1", "src"])}
    (tmp_path / "pose.json").write_text("{}")
    spec = {
        "subjects": [
            {
                "name": "pair",
                "identities": [
                    {
                        "name": "alice",
                        "photos": ["a1.png"],
                        "references": ["a2.png"],
                        "region": [0, 0, 8, 16],
                    },
                    {"name": "bob", "photos": ["b1.png"]},
                ],
                "condition": "pose.json",
                "references": ["src.png"],
            },
            "b1.png",
        ]
    }
    path = tmp_path / "subjects.json"
    path.write_text(json.dumps(spec))
    pair, single = load_subjects(path)
    assert pair.multi and [i.name for i in pair.identities] == ["alice", "bob"]
    assert pair.identities[0].region == (0.0, 0.0, 8.0, 16.0)
    assert pair.reference_photos() == (files["src"],)
    assert pair.identities[0].face_references() == (files["a2"],)
    assert pair.identities[1].face_references() == (files["b1"],)
    assert pair.condition == tmp_path / "pose.json"
    assert single.name == "b1" and not single.multi
    # the fingerprint follows the contents, not the paths
    fp = pair.fingerprint()
    _img(files["a2"], 42)
    assert load_subjects(path)[0].fingerprint() != fp
    for bad, needle in (
        ({"subjects": [{"identities": []}]}, "identities"),
        ({"subjects": [{"identities": [{"photos": ["nope.png"]}]}]}, "no such file"),
        (
            {"subjects": [{"identities": [{"photos": ["a1.png"], "region": [5, 0, 1, 1]}]}]},
            "region",
        ),
        ({"subjects": ["a1.png", "a1.png"]}, "two inputs"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=needle):
            load_subjects(path)


def test_evaluate_dry_run_reads_a_subjects_file(tmp_path, capsys):
    _img(tmp_path / "a.png", 0)
    _img(tmp_path / "b.png", 1)
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "subjects": [
                    {"name": "ab", "identities": [{"photos": ["a.png"]}, {"photos": ["b.png"]}]}
                ]
            }
        )
    )
    code = main(
        [
            "evaluate",
            "--faces",
            str(path),
            "--method",
            "identity",
            "--out",
            str(tmp_path / "o"),
            "--dry-run",
        ]
    )
    assert code == 0
    assert "subjects   1 (2 identities" in capsys.readouterr().out
