"""CodeFormer's network: its equations on hand values, the official checkpoint layout, loading."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from instantportrait.errors import InputError, ModelNotFoundError
from instantportrait.models.codeformer import (
    TINY_CODEFORMER_CONFIG,
    CodeFormer,
    adaptive_instance_normalization,
    config_from_state_dict,
    controllable_feature_transform,
    load_codeformer,
    write_tiny_codeformer,
)

OFFICIAL_KEYS = Path(__file__).parent / "data" / "codeformer_official_keys.txt"


@pytest.fixture(scope="module")
def tiny() -> CodeFormer:
    torch.manual_seed(0)
    model = CodeFormer(**TINY_CODEFORMER_CONFIG).eval()
    with torch.no_grad():
        model.position_emb.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_cft_on_hand_values():
    # F_d = 2, alpha = 0.5, beta = 1: F_d + (alpha F_d + beta) w = 2 + 2 w
    dec = torch.tensor([2.0, -4.0])
    alpha, beta = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.0])
    assert controllable_feature_transform(dec, alpha, beta, 0.5).tolist() == [3.0, -4.5]
    assert controllable_feature_transform(dec, alpha, beta, 1.0).tolist() == [4.0, -5.0]
    # w = 0 leaves the decoder features unchanged (alpha/beta swapped would give 3.25)
    assert torch.equal(controllable_feature_transform(dec, alpha, beta, 0.0), dec)


def test_adain_against_statistics_module():
    content = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    style = torch.tensor([10.0, 10.0, 20.0, 20.0]).reshape(1, 1, 2, 2)
    out = adaptive_instance_normalization(content, style).flatten().tolist()
    c_mu, c_sd = 2.5, statistics.stdev([1, 2, 3, 4])  # unbiased, as CodeFormer's inference
    s_mu, s_sd = 15.0, statistics.stdev([10, 10, 20, 20])
    expected = [(c - c_mu) / c_sd * s_sd + s_mu for c in (1, 2, 3, 4)]
    assert out == pytest.approx(expected, abs=1e-4)  # eps 1e-5 inside the sqrt
    assert expected[0] == pytest.approx(8.2918, abs=1e-4)


def _official_layout() -> dict[str, tuple[int, ...]]:
    rows = [r.split() for r in OFFICIAL_KEYS.read_text().splitlines() if not r.startswith("#")]
    return {k: tuple(int(v) for v in s.split("x")) for k, s in rows}


def test_default_config_has_the_official_checkpoint_layout():
    official = _official_layout()
    assert len(official) == 515
    with torch.device("meta"):
        model = CodeFormer()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(official)) == [] and sorted(set(official) - set(ours)) == []
    assert ours == official
    # where the official code fuses (its fuse_encoder_block / fuse_generator_block tables)
    assert model.encoder.taps == {512: 2, 256: 5, 128: 8, 64: 11, 32: 14, 16: 18}
    assert model.generator.taps == {16: 6, 32: 9, 64: 12, 128: 15, 256: 18, 512: 21}
    # the configuration read back from the official shapes is the default one
    meta = {k: torch.empty(s, device="meta") for k, s in official.items()}
    config = config_from_state_dict(meta)
    for key, value in config.items():
        got = model.config[key]
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, key


def test_fidelity_zero_skips_fusion_and_cft_is_linear_in_w(tiny, faces):
    with torch.no_grad():
        base = tiny(faces, fidelity=0.0).sample
        half = tiny(faces, fidelity=0.5).sample
        assert not torch.allclose(base, half)
        # w = 0: identical to the plain VQGAN decode of the predicted codes
        logits = tiny.predict_codes(tiny(faces, fidelity=0.0).lq_feat)
        assert torch.equal(tiny(faces, fidelity=0.0).logits, logits)
    # at the first fusion point the decoder input does not depend on w: its change is w times
    # (alpha F_d + beta), so doubling w doubles the change
    first = str(min(TINY_CODEFORMER_CONFIG["connect_resolutions"]))
    seen = []
    hook = tiny.fuse_convs_dict[first].register_forward_hook(
        lambda m, args, out: seen.append((args[1].clone(), out.clone()))
    )
    try:
        with torch.no_grad():
            tiny(faces, fidelity=0.25)
            tiny(faces, fidelity=0.5)
    finally:
        hook.remove()
    (d1, o1), (d2, o2) = seen
    assert torch.equal(d1, d2)
    torch.testing.assert_close(o2 - d2, 2 * (o1 - d1), rtol=1e-4, atol=1e-5)


def test_batch_equals_single(tiny, faces):
    with torch.no_grad():
        both = tiny(faces).sample
        one = tiny(faces[1:]).sample
    torch.testing.assert_close(both[1:], one, rtol=1e-4, atol=1e-5)


def test_round_trips_folder_and_official_pth(tiny, faces, tmp_path):
    with torch.no_grad():
        ref = tiny(faces).sample
    tiny.save_pretrained(tmp_path / "folder")
    state = tiny.state_dict()
    torch.save({"params_ema": state, "params": {}}, tmp_path / "ema.pth")
    torch.save({"params": state}, tmp_path / "params.pth")
    torch.save(state, tmp_path / "bare.pth")
    for path in ("folder", "ema.pth", "params.pth", "bare.pth"):
        model = load_codeformer(tmp_path / path)
        assert not model.training and model.dtype == torch.float32
        with torch.no_grad():
            assert torch.equal(model(faces).sample, ref), path


def test_tiny_writer_loads(tmp_path, faces):
    write_tiny_codeformer(tmp_path, seed=3)
    model = load_codeformer(tmp_path, dtype=torch.float64)
    assert model.config.image_size == 32 and model.dtype == torch.float64
    with torch.no_grad():
        assert model(faces.double()).sample.shape == (2, 3, 32, 32)


def test_bad_weights_are_one_clear_line(tiny, tmp_path):
    with pytest.raises(ModelNotFoundError, match="model not found: no such local.*codeformer.pth"):
        load_codeformer(tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="without config.json"):
        load_codeformer(tmp_path / "empty")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_codeformer(tmp_path / "junk.pth")
    state = dict(tiny.state_dict())
    renamed = dict(state)
    renamed["ft_layers.0.attn.in_proj_weight"] = renamed.pop("ft_layers.0.self_attn.in_proj_weight")
    torch.save({"params_ema": renamed}, tmp_path / "renamed.pth")
    msg = r"1 missing: ft_layers\.0\.self_attn\.in_proj_weight; 1 unexpected: ft_layers\.0\.attn"
    with pytest.raises(InputError, match=msg):
        load_codeformer(tmp_path / "renamed.pth")
    reshaped = dict(state)
    reshaped["idx_pred_layer.0.bias"] = torch.zeros(4)
    torch.save({"params_ema": reshaped}, tmp_path / "reshaped.pth")
    with pytest.raises(
        InputError, match=r"1 shape: idx_pred_layer\.0\.bias \(4,\) \(expected \(32,\)\)"
    ):
        load_codeformer(tmp_path / "reshaped.pth")
    torch.save({"params_ema": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a CodeFormer state dict"):
        load_codeformer(tmp_path / "other.pth")
