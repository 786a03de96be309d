"""Metric models by Hub id: the default source served from the Hugging Face cache offline,
and the one missing-model line when it is absent (issue 22)."""

from __future__ import annotations

import pytest


def test_metric_model_default_hub_id_loads_from_the_cache(hub_cache, tiny_clip_dir):
    from instantportrait.evaluation.metrics.registry import MODELS, ModelHub

    default = MODELS["clip-vit-l-14"].default
    assert default == "openai/clip-vit-large-patch14"
    hub_cache(default, tiny_clip_dir)
    model = ModelHub().get("clip-vit-l-14")  # no --weights: the default Hub id
    assert model.config.projection_dim == 16  # the tiny model in the cache


def test_uncached_metric_model_is_the_one_missing_line(monkeypatch):
    from instantportrait.evaluation.metrics.registry import MetricUnavailable, ModelHub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = ModelHub({"clip-vit-l-14": "nobody/no-clip"})
    with pytest.raises(MetricUnavailable) as info:
        models.get("clip-vit-l-14")
    text = str(info.value)
    assert "--weights clip-vit-l-14 nobody/no-clip: model not found" in text
    assert "HF_HUB_OFFLINE=1" in text and "\n" not in text
