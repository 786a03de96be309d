"""FastFace's default sources, by their Hub ids, from a filled Hugging Face cache offline:
SDXL base, each family's weights, the FaceID-Plus-v2 adapter, the CLIP encoder (issue 22)."""

from __future__ import annotations

import pytest
import torch

from instantportrait.pipelines.fastface_loading import load_fastface
from instantportrait.pipelines.fastface_presets import (
    DEFAULT_ADAPTER,
    DEFAULT_BASE,
    DEFAULT_IMAGE_ENCODER,
    FAMILIES,
)


@pytest.mark.parametrize("family", ["hyper", "lightning"])
def test_default_hub_ids_load_from_the_cache(family, tiny_bundle, hub_cache, isolated_cache):
    hub_cache(DEFAULT_BASE, tiny_bundle["sdxl"])
    hub_cache(FAMILIES[family].source, tiny_bundle["sdxl-distilled"])
    hub_cache(DEFAULT_ADAPTER[0], tiny_bundle["faceid-plus-v2"])
    hub_cache(DEFAULT_IMAGE_ENCODER, tiny_bundle["clip-vision"])
    pipe = load_fastface(family)  # every source is its default Hub id
    local = load_fastface(
        family,
        base=tiny_bundle["sdxl"],
        distilled=tiny_bundle["sdxl-distilled"],
        ip_adapter=tiny_bundle["faceid-plus-v2"],
        image_encoder=tiny_bundle["clip-vision"],
    )
    assert pipe.family == family
    for (name, p), (_, q) in zip(pipe.unet.state_dict().items(), local.unet.state_dict().items()):
        assert torch.equal(p, q), name  # the cache served the same weights as the folders


def test_wrong_sources_are_one_line_naming_the_option(tiny_bundle, hub_cache, isolated_cache):
    from instantportrait.model_check import ModelMismatchError

    hub_cache("someone/sd-inpaint", tiny_bundle["clip-vision"])
    with pytest.raises(ModelMismatchError, match="--model someone/sd-inpaint .*CLIP vision"):
        load_fastface("someone/sd-inpaint")
