"""The ``fpga`` method kind and FPGA's protocols end to end on tiny subjects; the multi-ID
``region-iou`` face matcher against hand-made boxes; the Tables 1-3 layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

pytest.importorskip("dlib")


class TinyInception(torch.nn.Module):
    """A stand-in for the FID network: 48-D pooled colour features (``return_features``)."""

    def forward(self, x, return_features=True):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.fixture(scope="module")
def subjects(tmp_path_factory, astronaut_path, grace_hopper_path, openpose_person) -> Path:
    """single: the astronaut (held-out: mirrored crop), pose of one person, source photo;
    pair: astronaut + Grace Hopper with face regions, pose of two people."""
    root = tmp_path_factory.mktemp("subjects")
    a = Image.open(astronaut_path).convert("RGB")
    g = Image.open(grace_hopper_path).convert("RGB")
    a.resize((128, 128)).save(root / "astro.png")
    ImageOps.mirror(a.crop((40, 0, 420, 380))).resize((128, 128)).save(root / "astro_held.png")
    g.resize((128, 128)).save(root / "grace.png")
    Image.new("RGB", (64, 64), (90, 120, 150)).save(root / "source1.png")
    Image.new("RGB", (64, 64), (150, 100, 60)).save(root / "source2.png")
    canvas = {"canvas_width": 64, "canvas_height": 64}
    one = {**canvas, "people": [{"pose_keypoints_2d": openpose_person(32)}]}
    two = {**canvas, "people": [{"pose_keypoints_2d": openpose_person(x)} for x in (16, 44)]}
    (root / "one.json").write_text(json.dumps(one))
    (root / "two.json").write_text(json.dumps(two))
    data = {
        "subjects": [
            {
                "name": "single",
                "identities": [
                    {"name": "astro", "photos": ["astro.png"], "references": ["astro_held.png"]}
                ],
                "condition": "one.json",
                "references": ["source1.png"],
            },
            {
                "name": "pair",
                "identities": [
                    {"name": "astro", "photos": ["astro.png"], "region": [8, 4, 24, 20]},
                    {"name": "grace", "photos": ["grace.png"], "region": [36, 4, 52, 20]},
                ],
                "condition": "two.json",
                "references": ["source2.png"],
            },
        ]
    }
    (root / "subjects.json").write_text(json.dumps(data))
    return root / "subjects.json"


def test_fpga_kind_scored_end_to_end_on_the_protocols(subjects, tiny_fpga, tmp_path, tiny_clip):
    from instantportrait.evaluation import evaluate
    from instantportrait.evaluation.paper_tables import paper_table
    from instantportrait.evaluation.protocols import load_protocol
    from instantportrait.evaluation.report import overall_split, summarize
    from instantportrait.evaluation.store import ResultStore

    multi = load_protocol("fpga_multi_id")
    assert multi.face_match == "region-iou"
    assert "fid_face" in load_protocol("fpga_full_body").metrics
    out = tmp_path / "eval"
    s = evaluate(
        subjects,
        multi.prompts[:1],
        {"fpga": f"fpga:{tiny_fpga},steps=1"},
        "face_sim_dlib,clip_t_vitl14,clip_i,fid,ffc",
        out,
        weights={"clip-vit-l-14": tiny_clip, "inception": TinyInception()},
        face_match=multi.face_match,
        progress=False,
    )
    assert s.generated == 2 and s.failed_outputs == 0
    outputs = sorted((out / "outputs" / "fpga").rglob("*.png"))
    assert len(outputs) == 2 and all(Image.open(p).size == (64, 64) for p in outputs)
    store = ResultStore(out)
    cells = summarize(store)[("fpga", overall_split(store))]
    pair = store.conn.execute(
        "SELECT value, detail FROM results WHERE subject='pair' AND metric='face_sim_dlib'"
    ).fetchone()
    store.close()
    # FPGA's rule on the pair: each identity scores only through a face over its region; the
    # tiny random model paints none there, so each identity scores 0 (counted, not skipped)
    assert pair[0] == 0.0
    detail = json.loads(pair[1])
    assert detail["identities"] == {"astro": 0.0, "grace": 0.0}
    assert set(detail["region_iou"]) == {"astro", "grace"}
    assert cells["clip_t_vitl14"].n == 2 and cells["clip_i"].n == 2
    assert cells["fid"].mean is not None and cells["fid"].detail["n_outputs"] == 2
    assert cells["face_sim_dlib"].n >= 1

    table = paper_table(out, "fpga:multi_id_full_body")
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| Method | CLIP-I | CLIP-T | Face Sim | DINO | FID ↓ | Source |"
    assert "| FPGA + DIIR | 84.6 | 26.5 | 59.1 | 92.2 | 118.2 | published |" in lines
    assert lines[-1].startswith("| fpga | ") and lines[-1].endswith("| ours |")
    t1 = paper_table(out, "fpga:single_id_half_body")
    assert "| FPGA | 91.1 | 21.1 | 66.5 | 87.3 | 207.9 | published |" in t1


def test_fpga_condition_needs_a_pose_and_regions(subjects, tiny_fpga):
    from instantportrait.errors import InputError
    from instantportrait.evaluation.items import load_subjects
    from instantportrait.evaluation.kinds.fpga import subject_condition

    single, pair = load_subjects(subjects)
    cond, masks = subject_condition(pair, None, None)
    assert cond.size == (64, 64) and masks.shape == (2, 64, 64)
    # the identities' own regions, in identity order (not the keypoints' head boxes)
    assert masks[0, 10, 16] == 1 and masks[0, 10, 44] == 0 and masks[0, 30, 16] == 0
    assert masks[1, 10, 44] == 1 and masks[1, 10, 16] == 0
    cond, masks = subject_condition(single, 32, 48)
    assert cond.size == (32, 48) and masks is None
    from dataclasses import replace

    with pytest.raises(InputError, match="pose condition"):
        subject_condition(replace(single, condition=None), None, None)


def test_box_iou_by_hand():
    from instantportrait.evaluation.metrics.regions import box_iou

    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)  # 1 / (4 + 4 - 1)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == pytest.approx(0.5)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((0, 0, 4, 4), (0, 0, 4, 4)) == 1.0


class FakeFaces:
    def __init__(self, boxes):
        self.boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)

    def __len__(self):
        return len(self.boxes)


class FakeContext:
    """What the matcher reads: output faces (boxes + embeddings), identities with regions
    and reference embeddings."""

    def __init__(self, boxes, face_vectors, regions, ref_vectors):
        from types import SimpleNamespace

        self.faces = FakeFaces(boxes)
        self.face_vectors = [torch.tensor([v], dtype=torch.float32) for v in face_vectors]
        self.refs = [torch.tensor([v], dtype=torch.float32) for v in ref_vectors]
        ids = [SimpleNamespace(name=f"id{k}", region=r) for k, r in enumerate(regions)]
        self.subject = SimpleNamespace(identities=ids)
        self.detail = {}

    def all_faces(self, which):
        return self.faces

    def identity_names(self):
        return [i.name for i in self.subject.identities]

    def face_embedding(self, which, key, index=None):
        return self.face_vectors[index]

    def reference_embedding(self, k, key):
        return [self.refs[k]]


def test_region_iou_matcher_scores_only_faces_over_half_overlap():
    from instantportrait.evaluation.metrics import FACE_MATCHERS

    match = FACE_MATCHERS["region-iou"]
    region = (0, 0, 10, 10)
    s = 0.6  # the face's cosine with its reference: (0.6, 0.8) . (1, 0)
    # IoU 0.49 (a 10 x 4.9 face inside the region): not placed -> 0
    ctx = FakeContext([(0, 0, 10, 4.9)], [(0.6, 0.8)], [region], [(1.0, 0.0)])
    assert match(ctx, "dlib") == {"id0": 0.0}
    assert ctx.detail["region_iou"]["id0"] == pytest.approx(0.49)
    # IoU 0.51: placed -> its similarity
    ctx = FakeContext([(0, 0, 10, 5.1)], [(0.6, 0.8)], [region], [(1.0, 0.0)])
    assert match(ctx, "dlib") == {"id0": pytest.approx(s)}
    # exactly 0.5 is not "> 0.5"
    ctx = FakeContext([(0, 0, 10, 5)], [(0.6, 0.8)], [region], [(1.0, 0.0)])
    assert match(ctx, "dlib") == {"id0": 0.0}
    # two identities, two faces: each scored by the face over ITS region, not the most
    # similar one (the faces' embeddings are swapped relative to the regions)
    ctx = FakeContext(
        [(0, 0, 10, 10), (20, 0, 30, 10)],
        [(0.0, 1.0), (1.0, 0.0)],
        [(0, 0, 10, 10), (20, 0, 30, 10)],
        [(1.0, 0.0), (0.0, 1.0)],
    )
    assert match(ctx, "dlib") == {"id0": 0.0, "id1": 0.0}
    ctx = FakeContext(
        [(0, 0, 10, 10), (20, 0, 30, 10)],
        [(1.0, 0.0), (0.6, 0.8)],
        [(0, 0, 10, 10), (20, 0, 30, 10)],
        [(1.0, 0.0), (0.0, 1.0)],
    )
    assert match(ctx, "dlib") == {"id0": pytest.approx(1.0), "id1": pytest.approx(0.8)}
    # no face at all: every identity 0
    ctx = FakeContext([], [], [region], [(1.0, 0.0)])
    assert match(ctx, "dlib") == {"id0": 0.0}


def test_fid_face_compares_face_crops_only(astronaut_path, grace_hopper_path):
    from instantportrait.evaluation.metrics.fid import face_boxes_crops, fid, fid_face
    from instantportrait.evaluation.metrics.registry import ModelHub

    a = Image.open(astronaut_path).convert("RGB").resize((256, 256))
    g = Image.open(grace_hopper_path).convert("RGB").resize((256, 256))
    blank = Image.new("RGB", (256, 256), (128, 128, 128))
    crops, faceless = face_boxes_crops([a, g, blank])
    assert len(crops) == 2 and faceless == 1
    assert all(c.width < 200 for c in crops)  # the face boxes, not the whole images
    hub = ModelHub({"inception": TinyInception()})
    outs, refs = [a, g, blank], [ImageOps.mirror(a), ImageOps.mirror(g)]
    value, detail = fid_face(outs, refs, hub)
    mirrored, _ = face_boxes_crops(refs)
    expected, _ = fid(crops, mirrored, hub)  # the same distance on hand-cut crops
    assert value == pytest.approx(expected)
    assert detail["faceless_outputs"] == 1 and detail["n_outputs"] == 2
    with pytest.raises(ValueError, match="at least 2 faces"):
        fid_face([blank, blank], refs, hub)


def test_repcontrolnet_kind_scores_beside_the_id_controlnet_for_table_6(
    subjects, tiny_fpga, tmp_path, tiny_clip
):
    """Paper Table 6: the merged RepControlNet and the ID-ControlNet on the same items, the
    published rows above ours; the kind refuses an FPGA folder."""
    from instantportrait.errors import InputError
    from instantportrait.evaluation import evaluate
    from instantportrait.evaluation.methods import build_method
    from instantportrait.evaluation.paper_tables import paper_table
    from instantportrait.evaluation.protocols import load_protocol
    from instantportrait.tiny import write_tiny

    rep = write_tiny(tmp_path / "rep", "repcontrolnet", seed=0)
    protocol = load_protocol("fpga_repcontrolnet")
    out = tmp_path / "eval"
    s = evaluate(
        subjects,
        protocol.prompts[:1],
        {
            "fpga": f"fpga:{tiny_fpga},steps=1",
            "rep": f"repcontrolnet:{rep},steps=1,control_strength=0.5",
        },
        "face_sim_dlib,clip_t_vitl14,fid",
        out,
        weights={"clip-vit-l-14": tiny_clip, "inception": TinyInception()},
        progress=False,
    )
    assert s.generated == 4 and s.failed_outputs == 0
    assert len(list((out / "outputs" / "rep").rglob("*.png"))) == 2
    table = paper_table(out, "fpga:repcontrolnet")
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| Method | CLIP-T | Face Sim | FID ↓ | Source |"
    assert "| RepControlNet | 21 | 60.7 | 195.8 | published |" in lines
    assert [ln.split(" | ")[0] for ln in lines[-2:]] == ["| fpga", "| rep"]
    assert "CLIP-score on a 0-1 scale" in table
    with pytest.raises(InputError, match=r"FPGA pipeline folder .*\(use the fpga kind\)"):
        build_method(f"repcontrolnet:{tiny_fpga}").check()
    # issue 24: the fpga kind checks a merged RepControlNet up front, not per item
    with pytest.raises(InputError, match=r"merged RepControlNet .*\(use the repcontrolnet kind\)"):
        build_method(f"fpga:{rep}").check()
