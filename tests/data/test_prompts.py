"""Prompt rows: deterministic by seed, weights honoured (chi-square), streaming memory."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from instantportrait.cli import main
from instantportrait.data.prompts import (
    BLOCK,
    IDENTITY_ATTRIBUTES,
    PromptConfig,
    PromptGenerator,
    identity_prompt,
    read_prompts,
)
from instantportrait.errors import InputError


def test_same_seed_same_rows_other_seed_other_rows(tmp_path, capsys):
    a, b, c = (tmp_path / n for n in ("a.jsonl", "b.jsonl", "c.jsonl"))
    assert main(["data", "prompts", "-o", str(a), "--num", "50", "--seed", "3"]) == 0
    assert main(["data", "prompts", "-o", str(b), "--num", "50", "--seed", "3"]) == 0
    assert main(["data", "prompts", "-o", str(c), "--num", "50", "--seed", "4"]) == 0
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    rows = list(read_prompts(a))
    assert [r["index"] for r in rows] == list(range(50))
    for r in rows:
        assert set(r["attributes"]) == set(IDENTITY_ATTRIBUTES)
        # target = identity (+) instruction, in that order
        assert r["target"] == f"{r['identity']}, {r['instruction']}"
        assert r["attributes"]["gender"] in r["identity"]
    # an existing file is refused without --overwrite
    assert main(["data", "prompts", "-o", str(a), "--num", "5"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_rows_do_not_depend_on_where_the_stream_starts():
    gen = PromptGenerator(seed=7)
    whole = list(gen.rows(BLOCK + 10))
    tail = list(gen.rows(20, start=BLOCK - 10))
    assert tail == whole[BLOCK - 10 : BLOCK + 10]


def _chi_square_p(counts: Counter, entries, probabilities) -> float:
    from scipy.stats import chisquare

    observed = np.array([counts.get(e, 0) for e in entries], dtype=float)
    expected = np.asarray(probabilities) * observed.sum()
    return float(chisquare(observed, expected).pvalue)


def test_attribute_frequencies_match_configured_weights(tmp_path):
    pytest.importorskip("scipy")
    # a user's gender list with weights 1:3 and a skewed category mix
    (tmp_path / "gender.txt").write_text("woman | 1\nman | 3\n")
    (tmp_path / "cats.txt").write_text("makeup | 5\nbackground | 1\n")
    config = PromptConfig.build(
        replace={"gender": tmp_path / "gender.txt", "categories": tmp_path / "cats.txt"}
    )
    rows = list(PromptGenerator(config, seed=11).rows(20000))
    gender = Counter(r["attributes"]["gender"] for r in rows)
    assert _chi_square_p(gender, ["woman", "man"], [0.25, 0.75]) > 1e-3
    cats = Counter(r["category"] for r in rows)
    assert set(cats) == {"makeup", "background"}
    assert _chi_square_p(cats, ["makeup", "background"], [5 / 6, 1 / 6]) > 1e-3
    age = config.identity["age"]
    assert (
        _chi_square_p(Counter(r["attributes"]["age"] for r in rows), age.entries, age.probabilities)
        > 1e-3
    )
    # and the test has power: the swapped weights are rejected
    assert _chi_square_p(gender, ["woman", "man"], [0.75, 0.25]) < 1e-6


def test_user_lists_extend_and_new_categories(tmp_path):
    (tmp_path / "hats.txt").write_text("# my hats\nwearing a top hat\nwearing a beret | 2\n")
    (tmp_path / "cats.txt").write_text("hats\n")
    config = PromptConfig.build(
        extend={"categories": [tmp_path / "cats.txt"], "hats": [tmp_path / "hats.txt"]}
    )
    assert config.instructions["hats"].entries == ("wearing a top hat", "wearing a beret")
    (tmp_path / "bad.txt").write_text("x | heavy\n")
    with pytest.raises(InputError, match=r"bad.txt:1: weight 'heavy' is not a number"):
        PromptConfig.build(extend={"age": [tmp_path / "bad.txt"]})
    with pytest.raises(InputError, match="not an identity attribute nor a category"):
        PromptConfig.build(extend={"hats": [tmp_path / "hats.txt"]})


def test_identity_prompt_leaves_out_absent_attributes():
    attrs = {
        "age": "elderly",
        "ethnicity": "Irish",
        "gender": "man",
        "skin_tone": "fair skin",
        "hair": "grey hair",
        "glasses": "-",
    }
    assert identity_prompt(attrs) == "a photo of an elderly Irish man, fair skin, with grey hair"


def test_bad_prompt_rows_name_their_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"identity": "a", "instruction": 3, "target": "a, b"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:1: 'instruction' is not a string"):
        list(read_prompts(p))


def _peak_rss_mib(num: int, path, env) -> float:
    code = (
        "import resource, sys\n"
        "from instantportrait.data.prompts import write_prompts\n"
        f"write_prompts({str(path)!r}, {num}, seed=0)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_million_rows_stream_in_bounded_memory(tmp_path, subprocess_env):
    """~25 s here: a million rows need no more memory than a thousand (one block at a time)."""
    small = _peak_rss_mib(1000, tmp_path / "small.jsonl", subprocess_env)
    big = _peak_rss_mib(1_000_000, tmp_path / "big.jsonl", subprocess_env)
    with open(tmp_path / "big.jsonl") as fh:
        assert sum(1 for _ in fh) == 1_000_000
    assert big - small < 32, (small, big)  # a million rows in memory would be ~1 GB


def test_streaming_keeps_one_block_in_memory(tmp_path):
    """Python allocations while writing 4 blocks stay at about one block's."""
    import tracemalloc

    from instantportrait.data.prompts import write_prompts

    tracemalloc.start()
    try:
        write_prompts(tmp_path / "p.jsonl", BLOCK, seed=0)
        one = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        write_prompts(tmp_path / "q.jsonl", 4 * BLOCK, seed=0)
        ten = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ten < 1.5 * one, (one, ten)
    last = json.loads((tmp_path / "q.jsonl").read_text().splitlines()[-1])
    assert last["index"] == 4 * BLOCK - 1
