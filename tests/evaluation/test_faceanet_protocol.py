"""The ``faceanet`` method kind end to end on a tiny protocol: tuning cached per identity,
generation, CLIP-T / CLIP-I / DINO / face similarity, and the paper's Table 1 / 2 layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps

pytest.importorskip("dlib")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def inpaint_base(tmp_path_factory) -> Path:
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("m") / "inpaint", "inpaint", seed=0)


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory, astronaut_path) -> Path:
    """One identity folder: three tuning photos (the astronaut, mirrored, cropped) and two
    held-out photos (other crops) in reference/."""
    root = tmp_path_factory.mktemp("faces")
    a = Image.open(astronaut_path).convert("RGB")
    person = root / "astro"
    (person / "reference").mkdir(parents=True)
    a.resize((128, 128)).save(person / "1.png")
    ImageOps.mirror(a).resize((128, 128)).save(person / "2.png")
    a.crop((40, 0, 420, 380)).resize((128, 128)).save(person / "3.png")
    a.crop((20, 10, 400, 390)).resize((128, 128)).save(person / "reference" / "h1.png")
    ImageOps.mirror(a.crop((60, 0, 440, 380))).resize((128, 128)).save(
        person / "reference" / "h2.png"
    )
    return root


@pytest.fixture(scope="module")
def context_dir(tmp_path_factory, grace_hopper_path) -> Path:
    """Context photos that are not the identity's: another person, whose face is repainted."""
    root = tmp_path_factory.mktemp("context")
    g = Image.open(grace_hopper_path).convert("RGB").crop((0, 30, 512, 542)).resize((128, 128))
    g.save(root / "scene.png")
    return root


BASE_SPEC = "tune_steps=1,batch_size=1,lora_rank=4,resolution=64,gender=woman,steps=1"


@pytest.fixture(scope="module")
def spec(context_dir) -> str:
    return f"{BASE_SPEC},context_photos={context_dir}"


def run(identity_dir, base, out, methods, tiny_clip, tiny_dino):
    from instantportrait.evaluation import evaluate
    from instantportrait.evaluation.protocols import load_protocol

    protocol = load_protocol("faceanet")
    return evaluate(
        identity_dir,
        protocol.prompts[:2],
        methods,
        "clip_t_vitb32,clip_i,dino,face_sim_dlib,ffc",
        out,
        weights={"clip-vit-b-32": tiny_clip, "clip-vit-l-14": tiny_clip, "dino": tiny_dino},
        progress=False,
    )


def test_faceanet_kind_tunes_once_per_identity_and_is_scored(
    identity_dir, inpaint_base, tmp_path, tiny_clip, tiny_dino, spec
):
    from instantportrait.evaluation.methods import build_method
    from instantportrait.evaluation.paper_tables import paper_table
    from instantportrait.evaluation.report import overall_split, summarize
    from instantportrait.evaluation.store import ResultStore

    full = build_method(f"faceanet:{inpaint_base},{spec}")
    ablated = build_method(f"faceanet:{inpaint_base},{spec},attribute_loss=false,embeddings=false")
    out = tmp_path / "eval"
    s = run(identity_dir, inpaint_base, out, {"fa": full, "fa-abl": ablated}, tiny_clip, tiny_dino)
    assert s.generated == 4 and s.failed_outputs == 0
    # one tuning per (identity, tuning settings): two prompts share it
    assert full.tuning_runs == 1 and ablated.tuning_runs == 1
    tuned = sorted(out.glob("cache/*/identity-*/final/training_config.json"))
    assert len(tuned) == 2
    # the ablation's settings reach the trainer
    configs = [json.loads(p.read_text()) for p in tuned]
    tasks = sorted(c["tuning"]["tasks"] for c in configs)
    assert tasks == ["both", "global"]
    assert sorted(c["model"]["use_embeddings"] for c in configs) == [False, True]

    store = ResultStore(out)
    cells = summarize(store)
    split = overall_split(store)
    store.close()
    for metric in ("clip_t_vitb32", "clip_i", "dino"):
        assert cells[("fa", split)][metric].n == 2, metric
    # a tiny random G_id paints no recognisable face: scored, and failed for that reason
    face = cells[("fa", split)]["face_sim_dlib"]
    assert face.n + face.failed == 2
    assert face.n == 2 or "no face" in (face.error or "")
    assert cells[("fa", split)]["ffc"].total == 2

    # Table 1 / Table 2 layouts: the published rows, then ours
    t1 = paper_table(out, "faceanet:table1")
    lines = [ln for ln in t1.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| Method | CLIP-T | CLIP-I | DINO | Face Sim | Source")
    assert "| FaceA-Net | 23.3 | 64.8 | 35.5 | 70.7 | published |" in lines
    assert "| Celeb Basis | 21.5 | 66.6 | 35 | 45.9 | published |" in lines
    ours = [ln for ln in lines if ln.endswith("| ours |")]
    assert [ln.split(" | ")[0] for ln in ours] == ["| fa", "| fa-abl"]
    value = float(ours[0].split(" | ")[1])
    store = ResultStore(out)
    expected = summarize(store)[("fa", overall_split(store))]["clip_t_vitb32"].mean * 100
    store.close()
    assert value == pytest.approx(expected, abs=0.051)
    assert "CLIP-T = `clip_t_vitb32`" in t1
    t2 = paper_table(out, "faceanet:table2")
    assert "| decoupling only (no L_A, no embeddings) | 23.4 | 67.8 | published |" in t2

    # a rerun (fresh method objects, more metrics) reuses outputs and tuned identities
    again = build_method(f"faceanet:{inpaint_base},{spec}")
    s2 = run(identity_dir, inpaint_base, out, {"fa": again}, tiny_clip, tiny_dino)
    assert s2.generated == 0 and again.tuning_runs == 0
    # a new seed generates again, still from the cached identity
    from instantportrait.evaluation import evaluate
    from instantportrait.evaluation.protocols import load_protocol

    third = build_method(f"faceanet:{inpaint_base},{spec}")
    s3 = evaluate(
        identity_dir,
        load_protocol("faceanet").prompts[:1],
        {"fa": third},
        "ffc",
        out,
        seeds=[5],
        progress=False,
    )
    assert s3.generated == 1 and third.tuning_runs == 0


def test_faceanet_settings_are_checked(inpaint_base):
    from instantportrait.errors import InputError
    from instantportrait.evaluation.methods import build_method

    with pytest.raises(InputError, match="tune_steps"):
        build_method(f"faceanet:{inpaint_base},tune_steps=0,context_model=tiny")
    with pytest.raises(InputError, match="gender"):
        build_method(f"faceanet:{inpaint_base},gender=cat,context_model=tiny")
    # no context: the first tuning photo must not become the context image
    with pytest.raises(InputError, match="context_model=SDXL|tiny, or context_photos"):
        build_method(f"faceanet:{inpaint_base},gender=woman")
    m = build_method(f"faceanet:{inpaint_base},context_model=tiny,gender=alice:woman+bob:man")
    assert m.gender_of("bob") == "man" and m.gender_of("alice") == "woman"
    with pytest.raises(InputError, match="no gender"):
        m.gender_of("carol")


def test_tuning_key_depends_on_photos_settings_and_base():
    from instantportrait.evaluation.kinds.faceanet import tuning_key

    k = tuning_key(["a", "b"], {"tune_steps": 2}, {"path": "x"})
    assert k != tuning_key(["b", "a"], {"tune_steps": 2}, {"path": "x"})
    assert k != tuning_key(["a", "b"], {"tune_steps": 3}, {"path": "x"})
    assert k != tuning_key(["a", "b"], {"tune_steps": 2}, {"path": "y"})
    assert k == tuning_key(["a", "b"], {"tune_steps": 2}, {"path": "x"})


def test_faceanet_protocol_has_40_front_face_prompts_and_the_paper_metrics():
    from instantportrait.evaluation.protocols import list_protocols, load_protocol

    p = load_protocol("faceanet")
    assert len(p.prompts) == 40 and len({q.text for q in p.prompts}) == 40
    assert all(q.text.endswith(", front face") for q in p.prompts)
    assert {"clip_t_vitb32", "clip_i", "dino", "face_sim_facenet"} <= set(p.metrics)
    for name in list_protocols():  # every shipped protocol loads
        assert load_protocol(name).prompts


@pytest.mark.slow
def test_faceanet_kind_with_a_context_model(identity_dir, inpaint_base, tmp_path):
    """G_c (the tiny SDXL) draws the scene; the tuned G_id repaints its face (if one is found:
    the tiny G_c draws noise, so the pipeline may warn and return the context unchanged)."""
    import warnings

    from instantportrait.evaluation.items import subjects_from_files
    from instantportrait.evaluation.methods import build_method

    subject = subjects_from_files([identity_dir])[0]
    m = build_method(f"faceanet:{inpaint_base},{BASE_SPEC},context_model=tiny")
    m.cache_dir = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = m.generate(
            Image.new("RGB", (8, 8)), "a photo of a person on a beach", 0, subject=subject
        )
    assert isinstance(out, Image.Image) and m.tuning_runs == 1
    assert m.fingerprint_data()["context_model"] == "tiny"


def test_a_context_photo_that_is_a_tuning_photo_is_refused(identity_dir, inpaint_base, tmp_path):
    from instantportrait.errors import InputError
    from instantportrait.evaluation.items import subjects_from_files
    from instantportrait.evaluation.methods import build_method

    subject = subjects_from_files([identity_dir])[0]
    own = tmp_path / "ctx"
    own.mkdir()
    (own / "x.png").write_bytes(subject.identities[0].photos[0].read_bytes())
    m = build_method(f"faceanet:{inpaint_base},{BASE_SPEC},context_photos={own}")
    m.cache_dir = tmp_path / "cache"
    with pytest.raises(InputError, match="own photos"):
        m.generate(Image.new("RGB", (8, 8)), "a person", 0, subject=subject, prompt_index=0)
    assert m.tuning_runs == 0  # refused before tuning


def test_without_held_out_photos_the_metrics_need_an_explicit_flag(
    identity_dir, inpaint_base, tmp_path, spec
):
    import shutil

    from instantportrait.evaluation import evaluate
    from instantportrait.evaluation.methods import build_method
    from instantportrait.evaluation.protocols import load_protocol

    faces = tmp_path / "faces"
    shutil.copytree(identity_dir, faces)
    shutil.rmtree(faces / "astro" / "reference")
    prompts = load_protocol("faceanet").prompts[:1]
    out = tmp_path / "eval"
    m = build_method(f"faceanet:{inpaint_base},{spec}")
    s = evaluate(faces, prompts, {"fa": m}, "ffc", out, progress=False)
    assert s.generated == 0 and s.failed_outputs == 1 and m.tuning_runs == 0
    report = (out / "report.md").read_text()
    assert "no held-out photos" in report
    flagged = build_method(f"faceanet:{inpaint_base},{spec},tuning_references=true")
    s = evaluate(faces, prompts, {"fa-tuning-refs": flagged}, "ffc", out / "2", progress=False)
    assert s.generated == 1
    report = (out / "2" / "report.md").read_text()
    results = report.split("## Results", 1)[1].split("## ", 1)[0]
    assert "**Note on fa-tuning-refs**: tuning_references=true" in results


def test_evaluate_recovers_from_a_ctrl_c_during_tuning(
    identity_dir, inpaint_base, tmp_path, spec, monkeypatch, capsys
):
    from instantportrait.cli import main
    from instantportrait.training.faceanet import FaceANetTrainer

    real_step = FaceANetTrainer.training_step

    def interrupted(self, batch, generator):
        real_step(self, batch, generator)
        raise KeyboardInterrupt  # the user presses Ctrl-C after the run folder exists

    args = [
        "evaluate", "--protocol", "faceanet", "--faces", str(identity_dir), "--max-prompts",
        "1", "--method", f"fa=faceanet:{inpaint_base},{spec}", "--metrics", "ffc", "--out",
        str(tmp_path / "eval"), "--no-progress",
    ]  # fmt: skip
    monkeypatch.setattr(FaceANetTrainer, "training_step", interrupted)
    assert main(args) != 0  # the CLI ends on "interrupted"
    assert "interrupted" in capsys.readouterr().err
    cache = list((tmp_path / "eval" / "cache").glob("*/identity-*"))
    assert cache == []  # nothing half-written under the identity's name
    monkeypatch.setattr(FaceANetTrainer, "training_step", real_step)
    assert main(args) == 0
    res = capsys.readouterr()
    err = res.err
    assert "1 generated, 0 failed" in res.err + res.out
    assert len(list((tmp_path / "eval" / "cache").glob("*/identity-*/final"))) == 1
    # --no-progress: no tuning bar ("train FaceANetTrainer") was drawn
    assert "train FaceANetTrainer" not in err


def test_an_unfinished_identity_folder_of_an_older_run_is_tuned_again(
    identity_dir, inpaint_base, tmp_path, spec
):
    from instantportrait.evaluation.items import subjects_from_files
    from instantportrait.evaluation.methods import build_method

    subject = subjects_from_files([identity_dir])[0]
    m = build_method(f"faceanet:{inpaint_base},{spec}")
    m.cache_dir = tmp_path / "cache"
    # the folder an interrupted older version left: a config and no final/
    m.tuned_identity(subject.identities[0])
    run = next((tmp_path / "cache").glob("identity-*"))
    import shutil

    shutil.rmtree(run / "final")
    (run / "config.json").write_text("{}")
    m2 = build_method(f"faceanet:{inpaint_base},{spec}")
    m2.cache_dir = tmp_path / "cache"
    assert m2.tuned_identity(subject.identities[0]) == run / "final"
    assert m2.tuning_runs == 1 and (run / "final" / "training_config.json").is_file()


def test_retry_failed_tunes_a_failed_identity_again(
    identity_dir, inpaint_base, tmp_path, spec, monkeypatch, capsys
):
    from instantportrait.cli import main
    from instantportrait.training.faceanet import FaceANetTrainer

    real_step = FaceANetTrainer.training_step

    def broken(self, batch, generator):
        raise RuntimeError("out of memory (simulated)")

    args = [
        "evaluate", "--protocol", "faceanet", "--faces", str(identity_dir), "--max-prompts",
        "1", "--method", f"fa=faceanet:{inpaint_base},{spec}", "--metrics", "ffc", "--out",
        str(tmp_path / "eval"), "--no-progress",
    ]  # fmt: skip
    monkeypatch.setattr(FaceANetTrainer, "training_step", broken)
    main(args)
    assert "1 failed" in capsys.readouterr().err
    assert list((tmp_path / "eval" / "cache").glob("*/identity-*")) == []
    monkeypatch.setattr(FaceANetTrainer, "training_step", real_step)
    assert main([*args, "--retry-failed"]) == 0
    res = capsys.readouterr()
    assert "1 generated, 0 failed" in res.err + res.out
