"""The harness's ``restore`` step: "method" and "method + DIIR" scored side by side (FPGA
Table 2), the wrapper passing the harness's state to the inner method."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def tiny_restore(tmp_path_factory):
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("m") / "diir", "restore", seed=0)


@pytest.fixture(scope="module")
def faces(tmp_path_factory, astronaut_path):
    """One identity folder: the astronaut (small, so DIIR restores it) and a mirrored crop
    as its held-out photo."""
    root = tmp_path_factory.mktemp("faces")
    a = Image.open(astronaut_path).convert("RGB")
    (root / "astro" / "reference").mkdir(parents=True)
    a.resize((160, 160)).save(root / "astro" / "1.png")
    ImageOps.mirror(a.crop((30, 0, 410, 380))).resize((160, 160)).save(
        root / "astro" / "reference" / "held.png"
    )
    return root


def test_method_and_method_plus_diir_side_by_side(faces, tiny_restore, tmp_path):
    from instantportrait.evaluation import evaluate
    from instantportrait.evaluation.methods import build_method
    from instantportrait.evaluation.paper_tables import paper_table
    from instantportrait.evaluation.report import overall_split, summarize
    from instantportrait.evaluation.store import ResultStore

    plain = build_method("identity")
    diir = build_method(
        f"restore:{tiny_restore},method=identity,restore_below=1000,restore_steps=1"
    )
    out = tmp_path / "eval"
    s = evaluate(
        faces,
        ["a person in a park"],
        {"ident": plain, "ident+diir": diir},
        "face_sim_dlib,ffc",
        out,
        progress=False,
    )
    assert s.generated == 2 and s.failed_outputs == 0
    # the harness's state reaches the inner method
    assert diir.inner.cache_dir == diir.cache_dir is not None
    assert diir.inner.prompts == diir.prompts and len(diir.prompts) == 1
    a = np.asarray(Image.open(next((out / "outputs" / "ident").rglob("*.png"))), dtype=float)
    b = np.asarray(Image.open(next((out / "outputs" / "ident+diir").rglob("*.png"))), dtype=float)
    assert a.shape == b.shape
    diff = np.abs(a - b).sum(axis=2)
    assert diff.max() > 0  # the face was regenerated and pasted back
    assert (diff == 0).mean() > 0.2  # ... only around the face: the rest is the input

    store = ResultStore(out)
    split = overall_split(store)
    table = summarize(store)
    store.close()
    assert table[("ident", split)]["ffc"].total == 1
    assert table[("ident+diir", split)]["ffc"].total == 1
    text = paper_table(out, "fpga:single_id_full_body")
    rows = [ln for ln in text.splitlines() if ln.endswith("| ours |")]
    assert [r.split(" | ")[0] for r in rows] == ["| ident", "| ident+diir"]
    assert "| FPGA + DIIR | 86.9 | 23.5 | 74.2 | 95.5 | 270.5 | published |" in text
    assert "| FPGA | 86.9 | 23.8 | 30.5 | 94.2 | 269.5 | published |" in text
    t4 = paper_table(out, "fpga:restoration")  # Table 4: face similarity and face FID only
    lines = [ln for ln in t4.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| Method | Face Sim | FID (faces) ↓ | Source |"
    assert "| FPGA + DIIR + CodeFormer | 66.7 | 126.9 | published |" in lines
    ours = [r.split(" | ")[0] for r in lines if r.endswith("| ours |")]
    assert ours == ["| ident", "| ident+diir"]


def test_restore_key_holds_the_inner_method(tiny_restore, tmp_path):
    from instantportrait.errors import InputError, ModelNotFoundError
    from instantportrait.evaluation.methods import build_method

    one = build_method(f"restore:{tiny_restore},method=identity,resolution=64")
    two = build_method(f"restore:{tiny_restore},method=identity,resolution=96")
    assert one.fingerprint() != two.fingerprint()
    assert one.fingerprint_data()["inner"]["options"] == {"resolution": 64}
    with pytest.raises(InputError, match="method=KIND"):
        build_method(f"restore:{tiny_restore}")
    bad = build_method(f"restore:{tiny_restore},method=edit,model={tmp_path / 'nope'}")
    with pytest.raises(ModelNotFoundError, match="nope"):
        bad.check()
    with pytest.raises(ModelNotFoundError, match="DIIR"):
        build_method(f"restore:{tmp_path / 'nodiir'},method=identity").check()


def test_several_identities_restore_by_their_regions(
    tiny_restore, astronaut_path, grace_hopper_path
):
    """Two real faces side by side, each inside one identity's region: the restorer is asked
    to give each face the photo of the identity whose region holds it (told apart by the
    photos' sizes); one identity: its photo for every face."""
    import numpy as np
    import torch

    from instantportrait.evaluation.items import Identity, Subject
    from instantportrait.evaluation.methods import build_method
    from instantportrait.restoration.restorer import FaceRestorer

    a = Image.open(astronaut_path).convert("RGB").resize((200, 200))
    g = Image.open(grace_hopper_path).convert("RGB").crop((0, 30, 512, 542)).resize((200, 200))
    output = Image.new("RGB", (400, 200))
    output.paste(g, (0, 0))  # Grace Hopper's face on the left, the astronaut's on the right
    output.paste(a, (200, 0))
    subject = Subject(
        "pair",
        (
            Identity("astro", (astronaut_path,), region=(200, 0, 400, 200)),
            Identity("grace", (grace_hopper_path,), region=(0, 0, 200, 200)),
        ),
    )
    seen = []

    class Spy:
        config = SimpleNamespace(resolution=64)

        def __call__(self, prompt, crops, conds, masks, **kw):
            return SimpleNamespace(images=list(crops))

    def encoder(images):
        seen.append([im.size for im in images])
        return torch.zeros(len(images), 4, 32)

    m = build_method(f"restore:{tiny_restore},method=identity")
    m._restorer = FaceRestorer(Spy(), restore_below=1000, id_encoder=encoder)
    out = m.generate(output, "two people", 0, subject=subject)
    assert out.size == output.size
    grace, astro = Image.open(grace_hopper_path).size, Image.open(astronaut_path).size
    assert seen == [[grace, astro]]  # left to right: the identity of the region each face is in
    who = m.identities(output, a, subject)
    assert who["regions"].shape == (2, 200, 400) and who["regions"][1, :, :200].all()
    assert not np.any(who["regions"][0, :, :200])
    single = Subject("one", (Identity("astro", (astronaut_path,)),))
    assert m.identities(output, a, single)["id_images"].size == astro
