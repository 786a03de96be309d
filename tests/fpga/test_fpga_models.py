"""ID-ControlNet from any SD1.5 UNet, its save/load round trip, the resampler, conditions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from instantportrait.components import TINY_UNET_CONFIG
from instantportrait.conditions import (
    draw_mode,
    head_boxes,
    left_to_right,
    parse_keypoints,
    render_condition,
    render_landmarks,
    render_skeleton,
)
from instantportrait.errors import InputError
from instantportrait.models.id_controlnet import IDControlNetModel
from instantportrait.models.resampler import IDResampler
from instantportrait.multi_id_attention import IDAttnProcessor, id_processors


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**{**TINY_UNET_CONFIG, "in_channels": 4}).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.tensor([10, 700]),
        torch.randn(2, 77, 32, generator=g),
        torch.rand(2, 3, 64, 64, generator=g),
    )


def test_from_unet_copies_the_encoder_and_initialises_id_projections(unet):
    cn = IDControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    procs = id_processors(cn)
    assert len(procs) == 2 and all(isinstance(p, IDAttnProcessor) for p in procs.values())
    for name, proc in procs.items():
        layer = name.rsplit(".processor", 1)[0]
        torch.testing.assert_close(proc.to_k_id.weight, unet.get_submodule(layer).to_k.weight)
        torch.testing.assert_close(proc.to_v_id.weight, unet.get_submodule(layer).to_v.weight)
    torch.testing.assert_close(cn.conv_in.weight, unet.conv_in.weight)
    # without an identity it is exactly diffusers' ControlNet from the same UNet
    plain = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    plain.load_state_dict({k: v for k, v in cn.state_dict().items() if ".processor." not in k})
    with torch.no_grad():
        ours = cn(*_inputs(), return_dict=False)
        theirs = plain(*_inputs(), return_dict=False)
        with_id = cn(*_inputs(), id_embeds=torch.randn(2, 4, 32), return_dict=False)
    for a, b in zip(ours[0], theirs[0], strict=True):
        torch.testing.assert_close(a, b)
    # zero convolutions: the residuals start at zero, identity or not
    assert all(float(r.abs().max()) == 0 for r in with_id[0])


def test_identity_reaches_the_residuals_and_scale_zero_turns_it_off(unet):
    torch.manual_seed(0)
    cn = IDControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    for block in cn.controlnet_down_blocks:
        torch.nn.init.normal_(block.weight, std=0.1)
    torch.nn.init.normal_(cn.controlnet_mid_block.weight, std=0.1)
    ids = torch.randn(2, 4, 32)
    with torch.no_grad():
        none = cn(*_inputs(), return_dict=False)[1]
        with_id = cn(*_inputs(), id_embeds=ids, return_dict=False)[1]
        cn.set_id_scale(0.0)
        off = cn(*_inputs(), id_embeds=ids, return_dict=False)[1]
        cn.set_id_scale(1.0)
    assert not torch.allclose(with_id, none, atol=1e-4)
    torch.testing.assert_close(off, none)


def test_save_and_load_round_trip(unet, tmp_path):
    cn = IDControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    for p in cn.id_parameters():
        torch.nn.init.normal_(p)
    cn.save_pretrained(tmp_path / "cn")
    config = json.loads((tmp_path / "cn" / "config.json").read_text())
    assert config["_class_name"] == "IDControlNetModel" and config["id_dim"] == 32
    again = IDControlNetModel.from_pretrained(tmp_path / "cn")
    a, b = cn.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resampler_shapes_and_shortcut():
    r = IDResampler(id_embed_dim=16, clip_embed_dim=24, cross_attention_dim=32, depth=1, heads=2,
                    dim_head=16)  # fmt: skip
    ident, clip = torch.randn(3, 16), torch.randn(3, 5, 24)
    out = r(ident, clip)
    assert out.shape == (3, 4, 32)
    x = r.id_norm(r.id_proj(ident).view(3, 4, 32))
    for p in r.norm_out.parameters():  # zero the Perceiver branch's output: F_id = x exactly
        torch.nn.init.zeros_(p)
    torch.testing.assert_close(r(ident, clip), x)


def test_render_landmarks_signature_and_drawing():
    lm = np.array([[10.0, 12.0]] * 68)
    img = render_landmarks(lm, (40, 30))
    assert img.mode == "RGB" and img.size == (40, 30)
    arr = np.asarray(img)
    assert tuple(arr[12, 10]) == (255, 255, 255) and arr[0, 0].sum() == 0
    two = render_landmarks(np.stack([lm, lm + 15]), (40, 30))
    assert tuple(np.asarray(two)[27, 25]) == (255, 255, 255)
    with pytest.raises(InputError, match="landmarks"):
        render_landmarks(np.zeros((5, 2)), (40, 30))


def test_condition_modes_and_keypoint_formats():
    coco = {"keypoints": [v for i in range(17) for v in (10 + i, 20 + i, 2)]}
    kps, size = parse_keypoints(coco)
    assert kps.shape == (1, 18, 3) and size is None
    # the neck is the shoulders' midpoint (COCO 5 and 6); OpenPose's r_eye is COCO's 2
    np.testing.assert_allclose(kps[0, 1, :2], [15.5, 25.5])
    np.testing.assert_allclose(kps[0, 14, :2], [12, 22])
    skel = np.asarray(render_skeleton(kps, (64, 64)))
    lm = np.tile([[50.0, 50.0]], (68, 1))
    both = np.asarray(render_condition((64, 64), landmarks=lm, keypoints=kps, mode="both"))
    only_lm = np.asarray(render_condition((64, 64), landmarks=lm, keypoints=kps, mode="landmark"))
    only_sk = np.asarray(render_condition((64, 64), landmarks=lm, keypoints=kps, mode="skeleton"))
    np.testing.assert_array_equal(only_sk, skel)
    assert tuple(both[50, 50]) == (255, 255, 255) and tuple(only_sk[50, 50]) == (0, 0, 0)
    assert only_lm[:40].sum() == 0 and both[:40].sum() == skel[:40].sum()
    assert [draw_mode("both", u) for u in (0.0, 0.79, 0.85, 0.95)] == [
        "both", "both", "landmark", "skeleton"]  # fmt: skip
    assert draw_mode("landmark", 0.99) == "landmark"


def test_head_boxes_and_left_to_right_order():
    people = np.zeros((2, 18, 3))
    people[0, [0, 14, 15], :] = [[80, 20, 1], [76, 16, 1], [84, 16, 1]]
    people[1, [0, 14, 15], :] = [[20, 20, 1], [16, 16, 1], [24, 16, 1]]
    assert left_to_right(people) == [1, 0]
    box = head_boxes(people)[1]
    # eye distance 8 -> side max(8, 2*8) = 16, times 1.3, centred on (20, 18)
    np.testing.assert_allclose(box, [20 - 10.4, 18 - 10.4, 20 + 10.4, 18 + 10.4])
    people[0, :, 2] = 0
    assert head_boxes(people)[0] is None


def test_reference_tables_ship_with_the_package():
    from importlib.resources import files

    ref = json.loads((files("instantportrait") / "protocols" / "fpga_reference.json").read_text())
    t1 = {r["method"]: r for r in ref["tables"]["single_id_half_body"]["rows"]}
    assert t1["FPGA"]["face_sim"] == 66.5 and t1["InstantID"]["fid"] == 220.3
    t3 = ref["tables"]["multi_id_full_body"]["rows"]
    assert [r["face_sim"] for r in t3 if r["method"] == "FPGA"] == [50.1, 59.1]
