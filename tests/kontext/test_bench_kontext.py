"""The meta-device counters of benchmarks/bench_kontext.py, checked on calls whose FLOPs and
live bytes are known by hand (the real-size figures are only as good as these)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kontext.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kontext", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_live_bytes_counts_storages_not_views(bench):
    def call():
        a = torch.zeros(1000, device="meta")  # 4000 bytes
        b = a + 1  # 8000 live
        v = b.view(10, 100)  # a view: nothing new
        del a, b  # b's storage lives on in v: 4000 live
        return v * 2  # 8000 again, not 12000

    got = bench.measure(call)
    assert got["activation_peak_bytes"] == 8000
    assert got["flops"] == 0


def test_attention_fused_keeps_no_scores_and_flops_are_the_two_matmuls(bench):
    b, h, n, d = 1, 2, 64, 8

    def call():
        q = torch.zeros(b, h, n, d, device="meta")
        return F.scaled_dot_product_attention(q, q, q)

    fused = bench.measure(call, fused_attention=True)
    math = bench.measure(call)
    q_bytes = b * h * n * d * 4
    assert fused["activation_peak_bytes"] == 2 * q_bytes  # q and the output
    assert math["activation_peak_bytes"] >= 2 * q_bytes + b * h * n * n * 4  # + the scores
    assert fused["flops"] == math["flops"] == 2 * (2 * b * h * n * n * d)  # QK^T and PV


def test_kontext_token_count_at_1024(bench):
    from diffusers import FluxTransformer2DModel

    from instantportrait.backbones.kontext_components import TINY_TRANSFORMER_CONFIG

    with torch.device("meta"):
        tr = FluxTransformer2DModel(**TINY_TRANSFORMER_CONFIG).to(torch.bfloat16)
    call, n = bench.kontext_transformer_call(tr, 1024, 1024, text_tokens=512)
    assert n == 4096  # (1024 / 8 / 2)^2 packed tokens, as many again for the edit image
    with torch.no_grad():
        assert tuple(call().shape) == (1, 2 * 4096, 64)
