"""The paper's published rows shipped as reference data, and the preset/family tables."""

from __future__ import annotations

import json
from importlib import resources

from instantportrait.pipelines.fastface_presets import FAMILIES, fastface_presets


def _reference() -> dict:
    text = resources.files("instantportrait").joinpath("protocols/fastface_reference.json")
    return json.loads(text.read_text())


def test_reference_rows_are_complete_and_name_our_presets() -> None:
    ref = _reference()
    assert "2505.21144" in ref["source"]
    presets = fastface_presets()
    counts = {"table1": 24, "table2": 8, "table3": 24}
    for name, table in ref["tables"].items():
        assert len(table["rows"]) == counts[name]
        for row in table["rows"]:
            assert row["family"] in FAMILIES and row["setting"] in presets
    # spot checks against the paper (Table 1 Hyper base, Table 2 Turbo + DCG, Table 3 LCM + AM1)
    t1 = {(r["label"], r["lora_scale"]): r for r in ref["tables"]["table1"]["rows"]}
    assert t1[("Hyper base", 1.0)] == {
        "family": "hyper",
        "setting": "baseline",
        "label": "Hyper base",
        "lora_scale": 1.0,
        "ID": 0.567,
        "CLIP": 0.244,
        "AE": 6.092,
        "FFC": 2,
    }
    t2 = {r["label"]: r for r in ref["tables"]["table2"]["rows"]}
    assert (t2["Turbo + DCG"]["ID"], t2["Turbo + DCG"]["IR"]) == (0.254, 1.007)
    t3 = {(r["label"], r["lora_scale"]): r for r in ref["tables"]["table3"]["rows"]}
    assert t3[("LCM + AM1", 0.5)]["FFC"] == 34


def test_published_presets_and_families() -> None:
    presets = fastface_presets()
    assert set(presets) >= {
        "baseline",
        "am1",
        "am2",
        "am2_noadain",
        "dcg",
        "fastface-am1",
        "fastface-am2",
    }
    assert presets["baseline"].guidance is None and presets["baseline"].am is None
    dcg = presets["fastface-am2"].guidance
    assert (dcg.variant, dcg.alpha, dcg.beta, dcg.rescale) == (
        "dcg2",
        (1.0, 1.5, 1.5, 1.0),
        (1.0, 3.0, 3.0, 1.0),
        0.75,
    )
    assert (
        presets["fastface-am2"].am.apply_adain and presets["fastface-am1"].am.kind == "scale_power"
    )
    assert presets["am1"].am.scale == {"down": 1.55, "up": 1.45}  # code values (spec D1)
    assert presets["am1_paper"].am.scale == {"down": 1.45, "up": 1.55}
    assert FAMILIES["lcm"].baseline_guidance == 1.5 and FAMILIES["turbo"].resolution == 512
