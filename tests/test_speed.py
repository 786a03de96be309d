"""The speed registry and presets, resolved per device (no model needed)."""

from __future__ import annotations

import pytest
import torch

from instantportrait.errors import InputError
from instantportrait.speed import FEATURES, PRESETS, parse_features, resolve_speed


def names(features):
    return [f.name for f in features]


def test_every_preset_names_registered_features():
    for preset, members in PRESETS.items():
        assert all(m in FEATURES for m in members), preset
    assert PRESETS["none"] == ()


def test_features_apply_in_order_whatever_the_spelling():
    got = names(parse_features("cuda_graphs+fp16+channels_last"))
    assert got == ["fp16", "channels-last", "cuda-graphs"]
    assert names(parse_features(["fuse-qkv", "fp16", "fp16"])) == ["fp16", "fuse-qkv"]
    with pytest.raises(InputError, match="unknown option warp"):
        parse_features("fp16+warp")


def test_presets_on_cpu_skip_half_precision_and_cuda_only_parts():
    applied, skipped = resolve_speed("max", torch.device("cpu"))
    assert names(applied) == ["channels-last", "sdpa", "fuse-qkv", "tiny-vae"]
    assert {n for n, _ in skipped} == {"fp16", "cudnn-benchmark", "cuda-graphs"}


def test_presets_on_cuda_keep_everything():
    applied, skipped = resolve_speed("max", torch.device("cuda"))
    assert names(applied)[0] == "fp16" and names(applied)[-1] == "cuda-graphs"
    assert skipped == []


def test_named_features_on_cpu():
    applied, _ = resolve_speed("fp16+channels-last", "cpu")  # half precision runs anywhere
    assert names(applied) == ["fp16", "channels-last"]
    with pytest.raises(InputError, match="needs a CUDA device"):
        resolve_speed("cudnn-benchmark", "cpu")
    assert resolve_speed(None, "cpu") == ([], [])
    assert resolve_speed("none", "cpu") == ([], [])
