"""The FastFace protocol: the ``fastface`` method kind end to end on the tiny bundle, the
sweep, the Tables 1-3 layout, the Pareto front, FFC, FSC's official scaling, the split
prompt files, a missing model, and two processes under ``accelerate launch``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from instantportrait.cli import main
from instantportrait.errors import InputError
from instantportrait.evaluation import fastface_report as FR
from instantportrait.evaluation.figures import _sweeps, pareto_front
from instantportrait.evaluation.methods import parse_method_spec
from instantportrait.evaluation.metrics.fastface import official_fsc_pixels
from instantportrait.evaluation.protocols import load_protocol, read_prompts
from instantportrait.evaluation.report import Cell
from instantportrait.evaluation.runner import rank_block
from instantportrait.evaluation.store import ResultStore
from instantportrait.evaluation.sweeps import FASTFACE_SWEEP, expand_sweeps, parse_sweep
from launching import launch

KINDS = ("sdxl", "sdxl-distilled", "faceid-plus-v2", "arcface", "clip-vision")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastface-tiny")
    for kind in KINDS:
        assert main(["init-tiny", "--kind", kind, str(root / kind)]) == 0
    return root


def _spec(bundle: Path, **extra) -> str:
    parts = [
        "fastface:lightning",
        f"base={bundle / 'sdxl'}",
        f"distilled={bundle / 'sdxl-distilled'}",
        f"ip_adapter={bundle / 'faceid-plus-v2'}",
        f"image_encoder={bundle / 'clip-vision'}",
        f"face_model={bundle / 'arcface' / 'arcface.safetensors'}",
        "resolution=32",
        "steps=1",
    ]
    return ",".join(parts + [f"{k}={v}" for k, v in extra.items()])


@pytest.fixture(scope="module")
def fastface_run(bundle, tmp_path_factory, astronaut_path, tiny_clip_dir):
    """One real ``evaluate`` run of the fastface kind: 1 face x (1 realistic + 1 stylistic)."""
    tmp = tmp_path_factory.mktemp("ff-eval")
    prompts = tmp / "prompts.txt"
    prompts.write_text(
        "[realistic]\na photo of a person in a park\n"
        "[stylistic]\noil painting; a person reading a book\n"
    )
    out = tmp / "eval"
    args = [
        "evaluate",
        "--protocol",
        "fastface",
        "--faces",
        str(astronaut_path),
        "--prompts",
        str(prompts),
        "--method",
        "ff=" + _spec(bundle, preset="fastface-am2"),
        "--metrics",
        "face_sim_arcface,face_sim_dlib,clip_t_vitl14,fsc_official,ffc,steps",
        "--weights",
        f"clip-vit-l-14={tiny_clip_dir}",
        "--out",
        str(out),
        "--no-progress",
    ]
    code = main(args)
    return code, out


def test_fastface_kind_generates_and_is_scored_end_to_end(fastface_run, capsys):
    code, out = fastface_run
    assert code == 0
    pngs = sorted((out / "outputs" / "ff").rglob("*.png"))
    assert len(pngs) == 2
    with Image.open(pngs[0]) as im:
        assert im.size == (32, 32)
    with ResultStore(out) as store:
        rows = [r for r in store.rows() if r.metric in ("clip_t_vitl14", "ffc")]
        settings = store.methods()["ff"]["settings"]
    # CLIP-T scored both outputs; FFC has a row per item (noise outputs: faces not found)
    assert sorted(r.metric for r in rows if r.status == "ok") == ["clip_t_vitl14"] * 2 + ["ffc"] * 2
    assert settings["preset"] == "fastface-am2" and settings["ip_adapter_scale"] == 0.8
    tables = (out / "fastface_tables.md").read_text()
    # our row sits among the Lightning rows of Tables 1-3 (joint / stylistic / realistic)
    assert tables.count("| **Lightning + FF_AM2** | this run (λ 0.8; ff) |") == 3
    assert "FastFace Tables 1-3" in (out / "report.md").read_text()
    assert "face detector" in tables.lower() and "ava+logos-l14-linearMSE" in tables


def test_missing_face_model_or_model_exits_2_naming_it(
    bundle, tmp_path, astronaut_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    base = ["evaluate", "--faces", str(astronaut_path), "--metrics", "ffc", "--no-progress"]
    spec = _spec(bundle).replace(f",face_model={bundle / 'arcface' / 'arcface.safetensors'}", "")
    code = main([*base, "--method", f"ff={spec}", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "face_model=" in err[0] and "w600k_r50.onnx" in err[0]
    assert not (tmp_path / "a").exists()
    spec = _spec(bundle).replace("fastface:lightning", f"fastface:{tmp_path / 'nope'}")
    code = main([*base, "--method", f"ff={spec}", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(tmp_path / "nope") in err[0]
    assert not (tmp_path / "b").exists()
    # offline, a default Hub source that is not cached is named too (here the SDXL base)
    face = bundle / "arcface" / "arcface.safetensors"
    code = main([*base, "--method", f"ff=fastface:lightning,face_model={face}", "--out", "c"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "base stabilityai/stable-diffusion-xl-base-1.0: model not found" in err[0]


def test_sweep_expands_into_the_papers_grid():
    grid = parse_sweep("fastface")
    assert grid == {
        "ip_adapter_scale": (0.1, 0.35, 0.5, 0.65, 0.8, 0.95),
        "lora_scale": (1.0, 0.5),
    }
    assert grid == FASTFACE_SWEEP
    methods = {
        "ff": parse_method_spec("fastface:hyper,preset=fastface-am1,face_model=w.onnx"),
        "ref": parse_method_spec("identity"),
    }
    out = expand_sweeps(methods, grid)
    assert out["ref"] is methods["ref"]
    swept = {n: s for n, s in out.items() if n != "ref"}
    assert len(swept) == 12
    assert {(s.options["ip_adapter_scale"], s.options["lora_scale"]) for s in swept.values()} == {
        (a, b) for a in grid["ip_adapter_scale"] for b in grid["lora_scale"]
    }
    s = swept["ff-ips0.35-lora0.5"]
    assert (s.kind, s.path, s.options["preset"]) == ("fastface", "hyper", "fastface-am1")
    again = parse_method_spec(s.text)  # the stored SPEC text reads back to the same method
    assert (again.kind, again.path, again.options) == (s.kind, s.path, s.options)
    assert parse_sweep("lora_scale=1,0.5") == {"lora_scale": (1, 0.5)}
    with pytest.raises(InputError, match="no --method has that setting"):
        expand_sweeps({"ref": methods["ref"]}, {"lora_scale": (1.0,)})
    with pytest.raises(InputError):
        parse_sweep("lora_scale")


def test_sweep_on_the_command_line(bundle, astronaut_path, tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--protocol",
            "fastface",
            "--faces",
            str(astronaut_path),
            "--method",
            "ff=" + _spec(bundle),
            "--sweep",
            "fastface",
            "--metrics",
            "ffc",
            "--out",
            str(tmp_path / "e"),
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("method     ff-ips") == 12
    assert "ip_adapter_scale=0.95,lora_scale=0.5" in out
    assert "items      384" in out  # 1 face x 32 prompts x 12 methods


def test_pareto_curves_follow_the_sweep_and_the_front_is_the_undominated_set():
    grid = parse_sweep("fastface")
    methods = expand_sweeps({"ff": parse_method_spec("fastface:hyper")}, grid)
    info = {n: {"spec": s.text} for n, s in methods.items()}
    curves = dict(_sweeps(info))
    assert sorted(curves) == [
        "ip_adapter_scale, lora_scale=0.5",
        "ip_adapter_scale, lora_scale=1.0",
    ]
    assert curves["ip_adapter_scale, lora_scale=1.0"] == [
        f"ff-ips{v}-lora1" for v in ("0.1", "0.35", "0.5", "0.65", "0.8", "0.95")
    ]
    # hand-made (ID, CLIP) points: b dominates c; a, b, d trade off; e ties a exactly
    points = {
        "a": (0.60, 0.20),
        "b": (0.40, 0.30),
        "c": (0.30, 0.25),
        "d": (0.70, 0.10),
        "e": (0.60, 0.20),
        "f": (0.55, 0.20),
    }
    assert sorted(pareto_front(points)) == ["a", "b", "d", "e"]


class _FakeStore:
    """What fastface_rows reads from a store: the run's methods and their settings."""

    def __init__(self, methods):
        self._methods = methods

    def meta(self):
        return {"run": {"methods": {n: m["key"] for n, m in self._methods.items()}}}

    def methods(self):
        return self._methods


def test_tables_hold_the_published_rows_and_ours():
    methods = {}
    table = {}
    for name, lora, ffc in (("ff1", 1.0, 3), ("ff05", 0.5, 40)):
        methods[name] = {
            "spec": f"fastface:hyper,preset=fastface-am1,lora_scale={lora}",
            "key": name,
            "settings": {"model": "hyper", "preset": "fastface-am1", "lora_scale": lora},
        }
        table[(name, "all")] = {
            "face_sim_arcface": Cell(status="unavailable"),
            "face_sim_dlib": Cell(mean=0.9123, std=0.01, n=117),
            "clip_t_vitl14": Cell(mean=0.25, std=0.01, n=120),
            "ffc": Cell(mean=float(ffc), total=120),
        }
    methods["idref"] = {"spec": "identity", "key": "idref", "settings": {}}
    table[("idref", "all")] = {"ffc": Cell(mean=0.0, total=120)}
    text = FR.fastface_tables_md(_FakeStore(methods), table)
    lines = text.splitlines()
    t1 = lines.index(next(ln for ln in lines if ln.startswith("## Table 1")))
    header = lines[t1 + 2]
    assert header == (
        "| Model | Source | ID (lora 1.0) | CLIP (lora 1.0) | AE (lora 1.0) | FFC (lora 1.0) | "
        "ID (lora 0.5) | CLIP (lora 0.5) | AE (lora 0.5) | FFC (lora 0.5) |"
    )
    body = lines[t1 + 4 : lines.index("", t1 + 4)]
    published = [ln for ln in body if "| paper (λ 0.8) |" in ln]
    assert len(published) == 12  # 4 families x (base, FF_AM1, FF_AM2), Table 1 of the paper
    assert (
        "| Hyper + FF_AM1 | paper (λ 0.8) | 0.602 | 0.247 | 6.134 | 2 | 0.445 | 0.259 | "
        "6.309 | 72 |" in body
    )
    ours = (
        "| **Hyper + FF_AM1** | this run (λ 0.8; ff1, ff05) | 0.912 | 0.250 | — | 3 / 120 | "
        "0.912 | 0.250 | — | 40 / 120 |"
    )
    assert ours in body
    # ours comes after the paper's Hyper rows and before the Lightning rows
    assert body.index(ours) == 3 and body[4].startswith("| Lightning base |")
    assert "ID = `face_sim_dlib`" in text  # the dlib stand-in is named
    assert "idref" not in text
    # Tables 2 and 3 have no rows of ours (the run had only the joint split)
    assert text.count("this run (") == 1
    t2 = lines.index(next(ln for ln in lines if ln.startswith("## Table 2")))
    assert lines[t2 + 2] == "| Model | Source | ID | CLIP | IR | FCS |"
    assert "| Turbo + DCG | paper (λ 0.8) | 0.254 | 0.277 | 1.007 | 0.175 |" in text


def test_ffc_counts_items_whose_reference_or_output_has_no_face(
    tmp_path, astronaut_path, grace_hopper_path, capsys
):
    """Spec §6: FFC counts images where no face was found in the reference or the output."""
    flat = tmp_path / "flat.png"
    Image.new("RGB", (160, 160), (128, 128, 128)).save(flat)
    faces = tmp_path / "faces"
    faces.mkdir()
    for src, name in ((astronaut_path, "astro.png"), (flat, "flat.png")):
        Image.open(src).convert("RGB").resize((256, 256)).save(faces / name)
    made = tmp_path / "made"
    for face in ("astro", "flat"):
        (made / face).mkdir(parents=True)
        # prompt 0: an output with a face; prompt 1: a face-free output
        Image.open(grace_hopper_path).convert("RGB").resize((256, 256)).save(
            made / face / "000_s0.png"
        )
        Image.new("RGB", (256, 256), (90, 90, 90)).save(made / face / "001_s0.png")
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--faces",
            str(faces),
            "--prompts",
            _write(tmp_path / "p.txt", "a photo\nanother photo\n"),
            "--method",
            f"m=folder:{made}",
            "--metrics",
            "ffc",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    with ResultStore(out) as store:
        counted = {(r.face, r.prompt): r.value for r in store.rows() if r.metric == "ffc"}
    # astro reference + face output: 0; astro + face-free output: 1; flat reference: always 1
    assert counted == {
        ("astro", "a photo"): 0.0,
        ("astro", "another photo"): 1.0,
        ("flat", "a photo"): 1.0,
        ("flat", "another photo"): 1.0,
    }
    assert "| m | 3 / 4 |" in (out / "report.md").read_text()


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_official_fsc_scaling_feeds_the_0_255_crop_as_if_it_were_minus1_1():
    """Spec §7 item 13: the code's crop is 0-255 and its preprocessing maps [-1, 1] to
    [0, 1], so a pixel p in [0, 1] reaches CLIP's normalisation as (255 p + 1) / 2."""
    crop = torch.full((1, 3, 160, 160), 0.2)
    px = official_fsc_pixels(crop)
    assert px.shape == (1, 3, 224, 224)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for c in range(3):
        expected = (26.0 - mean[c]) / std[c]  # (255 * 0.2 + 1) / 2 = 26
        assert torch.allclose(px[0, c], torch.full((224, 224), expected), rtol=1e-5)
    # a black crop is not black to CLIP: 0 -> 0.5 before normalisation
    zero = official_fsc_pixels(torch.zeros(1, 3, 160, 160))
    assert torch.allclose(zero[0, 0], torch.full((224, 224), (0.5 - mean[0]) / std[0]), rtol=1e-5)


def test_prompts_from_one_file_per_split_as_the_paper_releases_them(tmp_path):
    real = tmp_path / "prompts_nostyle.txt"
    real.write_text("a person in a park\n\na person at the beach\n")
    style = tmp_path / "prompts_style.txt"
    style.write_text("watercolor; a person reading\n")
    prompts = read_prompts(f"realistic={real},stylistic={style}")
    assert [(p.text, p.split, p.index) for p in prompts] == [
        ("a person in a park", "realistic", 0),
        ("a person at the beach", "realistic", 1),
        ("watercolor; a person reading", "stylistic", 2),
    ]
    with pytest.raises(InputError, match="in two files"):
        read_prompts(f"realistic={real},stylistic={real}")
    proto = load_protocol("fastface")
    assert proto.splits == ["realistic", "stylistic"]
    assert {"face_sim_arcface", "face_sim_dlib", "clip_t_vitl14", "laion_aesthetic"} <= set(
        proto.metrics
    )
    assert {"imagereward", "fsc_official", "ffc"} <= set(proto.metrics)
    assert "OUR OWN" in proto.prompts_note


def test_rank_blocks_are_disjoint_and_cover_the_items():
    for n, world in ((10, 3), (2, 4), (6480, 8)):
        blocks = [set(rank_block(n, r, world)) for r in range(world)]
        assert set().union(*blocks) == set(range(n))
        assert sum(len(b) for b in blocks) == n
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.multiprocess
def test_two_processes_under_accelerate_launch_split_the_items(
    tmp_path, astronaut_path, grace_hopper_path, capsys
):
    """``accelerate launch`` (its torch launcher; no process group is opened, so CPU works):
    every item is generated once, by one rank; rank 0 writes the report; a rerun resumes."""
    out = tmp_path / "eval"
    common = [
        "evaluate",
        "--protocol",
        "fastface",
        "--faces",
        f"{astronaut_path},{grace_hopper_path}",
        "--max-prompts",
        "3",
        "--method",
        "id=identity,resolution=32",
        "--metrics",
        "steps",
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = launch(common, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rank ")]
    assert sorted(ln[:9] for ln in lines) == ["rank 0/2:", "rank 1/2:"]
    generated = [int(ln.split(" generated")[0].rsplit(" ", 1)[1]) for ln in lines]
    assert sum(generated) == 6  # 2 faces x 3 prompts, each exactly once
    with ResultStore(out) as store:
        outputs = [o for o in store.outputs() if o["status"] == "ok"]
    assert len(outputs) == 6 and len({(o["face"], o["prompt"]) for o in outputs}) == 6
    assert (out / "report.md").is_file()
    assert main(common) == 0  # a rerun (one process) resumes: nothing left to do
    assert "6 already done, 0 generated" in capsys.readouterr().err
