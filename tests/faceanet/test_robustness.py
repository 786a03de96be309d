"""What a user can get wrong around FaceA-Net: damaged identity folders, presets, bad
generation options, photos of different people, the attribute swap's defaults, no --base."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from instantportrait.cli import main


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err.lower()
    return lines[0]


def damage(identity, tmp_path, how: str):
    bad = tmp_path / f"bad-{how}"
    shutil.copytree(identity / "final", bad)
    meta_file = bad / "faceanet.json"
    if how == "missing-key":
        meta = json.loads(meta_file.read_text())
        del meta["face_ratio"]
        meta_file.write_text(json.dumps(meta))
    elif how == "json":
        meta_file.write_text('{"gender": "woman", ')
    elif how == "lora":
        (bad / "pytorch_lora_weights.safetensors").write_bytes(b"\x00\x01not safetensors")
    elif how == "feats":
        (bad / "feat_embeddings" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    return bad


@pytest.mark.parametrize("how", ["missing-key", "json", "lora", "feats"])
def test_a_damaged_identity_is_one_line_exit_2(tuned, astronaut_path, tmp_path, capsys, how):
    bad = damage(tuned, tmp_path, how)
    out = tmp_path / "out"
    code, res = run_cli(
        [
            "generate", "--method", "faceanet", "--identity", bad, "--prompt", "a woman",
            "--context-image", astronaut_path, "--inpaint-steps", 1, "-o", out,
        ],
        capsys,
    )  # fmt: skip
    assert code == 2
    line = one_line(res.err)
    assert str(bad) in line
    assert not out.exists()


@pytest.mark.parametrize("how", ["missing-key", "lora"])
def test_a_damaged_identity_via_from_is_one_line_exit_2(
    tuned, other_person, tmp_path, capsys, train_args, how
):
    bad = damage(tuned, tmp_path, how)
    code, res = run_cli(
        [
            "train", "faceanet", "--from", bad, "--images", other_person, "--attribute",
            "nose", "--steps", 1, "-o", tmp_path / "swap", *train_args,
        ],
        capsys,
    )  # fmt: skip
    assert code == 2
    assert str(bad) in one_line(res.err)
    assert not (tmp_path / "swap").exists()


def test_preset_paper_is_the_papers_settings(photos, capsys):
    code, res = run_cli(
        ["train", "faceanet", "--images", photos[0], "--gender", "man", "--preset", "paper",
         "--dry-run"],
        capsys,
    )  # fmt: skip
    assert code == 0, res.err
    cfg = json.loads(res.out)
    # FaceA-Net §4: rank 48, lr 1.2e-4 / 2e-3, batch 4, 1000 steps, 512 px
    assert cfg["model"]["lora_rank"] == 48 and cfg["data"]["resolution"] == 512
    assert cfg["optim"]["lr"] == 1.2e-4 and cfg["tuning"]["lr_embeddings"] == 2e-3
    assert cfg["training"]["batch_size"] == 4 and cfg["training"]["max_steps"] == 1000


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--inpaint-guidance-scale", "0.5"], "--inpaint-guidance-scale"),
        (["--inpaint-steps", "0"], "--inpaint-steps"),
        (["--face-index", "-1"], "--face-index"),
        (["--face-index", "3"], "face_index: 3 but 1 face"),  # known only after detection
    ],
)
def test_failed_generation_leaves_no_output_folder(
    tuned, astronaut_path, tmp_path, capsys, flags, word
):
    out = tmp_path / "out"
    code, res = run_cli(
        [
            "generate", "--method", "faceanet", "--identity", tuned, "--prompt", "a woman",
            "--context-image", astronaut_path, "--inpaint-steps", 1, *flags, "-o", out,
        ],
        capsys,
    )  # fmt: skip
    assert code == 2 and word in one_line(res.err)
    assert not out.exists()


def test_photos_of_one_person_pass_the_identity_check(photos):
    from instantportrait.training.faceanet_data import SAME_PERSON_DISTANCE, check_one_person

    pairs = check_one_person([Image.open(p) for p in photos], [p.name for p in photos])
    assert len(pairs) == 3 and all(d < SAME_PERSON_DISTANCE for _, _, d in pairs)


def test_photos_of_two_people_are_refused_naming_the_pair(
    photos, other_person, tiny_base, tmp_path, capsys, train_args
):
    common = [
        "train", "faceanet", "--images", photos[0], photos[1], other_person, "--gender", "woman",
        "--base", tiny_base, "--steps", 1, *train_args,
    ]  # fmt: skip
    code, res = run_cli([*common, "-o", tmp_path / "r"], capsys)
    assert code == 2
    line = one_line(res.err)
    assert "g.png" in line and "different people" in line and "--allow-mixed-identities" in line
    assert not (tmp_path / "r").exists()
    code, res = run_cli([*common, "--allow-mixed-identities", "-o", tmp_path / "r2"], capsys)
    assert code == 0, res.err
    assert (tmp_path / "r2" / "final" / "faceanet.json").is_file()


def test_attribute_swap_defaults_to_100_local_steps(tuned, other_person, capsys):
    code, res = run_cli(
        ["train", "faceanet", "--from", tuned, "--images", other_person, "--attribute", "mouth",
         "--dry-run"],
        capsys,
    )  # fmt: skip
    assert code == 0, res.err
    cfg = json.loads(res.out)
    assert cfg["training"]["max_steps"] == 100
    assert cfg["tuning"]["tasks"] == "local" and cfg["tuning"]["attribute"] == "mouth"
    code, res = run_cli(
        ["train", "faceanet", "--from", tuned, "--images", other_person, "--attribute", "mouth",
         "--steps", 7, "--dry-run"],
        capsys,
    )  # fmt: skip
    assert json.loads(res.out)["training"]["max_steps"] == 7


@pytest.mark.parametrize("given", [True, False], ids=["bad-base", "no-base"])
def test_an_unloadable_base_names_the_base_option(
    photos, tmp_path, capsys, train_args, monkeypatch, given
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default's Hub id cannot load here
    base = ["--base", tmp_path / "no-such-model"] if given else []
    code, res = run_cli(
        ["train", "faceanet", "--images", *photos, "--gender", "woman", *base, "--steps", 1,
         "-o", tmp_path / "r", *train_args],
        capsys,
    )  # fmt: skip
    assert code == 2 and "--base" in one_line(res.err)
    assert not (tmp_path / "r").exists()
