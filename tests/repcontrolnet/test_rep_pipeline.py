"""The merged RepControlNet as a user gets it: the tiny bundle, multi-ID masks, the control
strength re-merge, and ``generate --method fpga --model REP``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main
from instantportrait.errors import InputError, ModelNotFoundError
from instantportrait.pipelines.rep_controlnet import RepControlNetPipeline


@pytest.fixture(scope="module")
def tiny_rep(tmp_path_factory):
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny") / "rep", "repcontrolnet")


@pytest.fixture(scope="module")
def pipe(tiny_rep):
    p = RepControlNetPipeline.from_pretrained(str(tiny_rep))
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, cond, **kw):
    return pipe("two people", cond, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(1), **kw).images  # fmt: skip


def test_merged_model_takes_several_identities_through_face_masks(pipe):
    """The merged UNet uses FPGA's multi-ID attention: a full mask is the single-ID result, an
    empty one removes the ID term, two identities need masks."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randn(2, 4, 32, generator=g)
    cond = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    single = _run(pipe, cond, id_embeds=ids[:1])
    torch.testing.assert_close(_run(pipe, cond, id_embeds=ids[:1], id_masks=np.ones((1, 64, 64))),
                               single)  # fmt: skip
    zero = _run(pipe, cond, id_embeds=ids[:1], id_masks=np.zeros((1, 64, 64)))
    torch.testing.assert_close(zero, _run(pipe, cond, id_embeds=ids[:1], id_scale=0.0))
    assert not torch.allclose(zero, single)
    left = np.zeros((2, 64, 64))
    left[0, :, :32], left[1, :, 32:] = 1, 1
    two = _run(pipe, cond, id_embeds=ids, id_masks=left)
    swapped = _run(pipe, cond, id_embeds=ids, id_masks=left[::-1].copy())
    assert not torch.allclose(two, swapped)  # which identity goes where matters
    with pytest.raises(InputError, match="face-region mask"):
        _run(pipe, cond, id_embeds=ids)


def test_the_condition_image_steers_the_merged_model(pipe):
    ids = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0))
    black = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    pose = np.zeros((64, 64, 3), np.uint8)
    pose[20:40, 30:34] = 255
    a = _run(pipe, black, id_embeds=ids)
    b = _run(pipe, Image.fromarray(pose), id_embeds=ids)
    assert not torch.allclose(a, b)
    off = {"id_embeds": ids, "adapter_scale": 0.0}
    torch.testing.assert_close(_run(pipe, black, **off), _run(pipe, Image.fromarray(pose), **off))


def test_control_strength_re_merges_from_the_saved_copies(tmp_path):
    """Eq. 6 with another beta, from the folder alone, equals merging the two-branch model in
    memory with that beta (the base weights are not in the folder)."""
    import copy

    from instantportrait.components import build_components
    from instantportrait.models.rep_controlnet import RepControlNet, RepLayer
    from instantportrait.pipelines.rep_controlnet import merged_pipeline, save_merged

    parts = build_components("tiny", seed=0, in_channels=4)
    from diffusers import DDIMScheduler

    parts["scheduler"] = DDIMScheduler()
    rep = RepControlNet(copy.deepcopy(parts["unet"]), adapter_channels=(8, 8, 16, 16), id_dim=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in rep.unet.modules():
            if isinstance(m, RepLayer):
                for p in m.branch.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_merged(merged_pipeline(rep, parts, beta=0.8), rep, tmp_path / "m", 1.0, 0.8)
    loaded = RepControlNetPipeline.from_pretrained(str(tmp_path / "m"))
    for beta in (0.3, 0.0, 1.5):
        loaded.set_control_strength(beta)
        want = rep.merge(1.0, beta).state_dict()
        got = loaded.unet.state_dict()
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)
    base = parts["unet"].state_dict()  # beta = 0 is the base itself
    loaded.set_control_strength(0.0)
    for k, v in base.items():
        torch.testing.assert_close(loaded.unet.state_dict()[k], v, rtol=0, atol=1e-6)
    (tmp_path / "m" / "rep_branches.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="rep_branches.safetensors"):
        RepControlNetPipeline.from_pretrained(str(tmp_path / "m")).set_control_strength(0.5)


def test_generate_fpga_accepts_a_merged_repcontrolnet(
    tiny_rep, two_people_pose, tmp_path, astronaut_path, grace_hopper_path
):
    pytest.importorskip("dlib")
    base = ["generate", "--method", "fpga", "--model", str(tiny_rep),
            "--id-image", str(astronaut_path), "--id-image", str(grace_hopper_path),
            "--pose", str(two_people_pose), "--prompt", "two", "--fpga-steps", "1"]  # fmt: skip
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    assert main([*base, "--control-strength", "0", "-o", str(tmp_path / "b")]) == 0
    a = np.asarray(Image.open(tmp_path / "a" / "0000.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "0000.png"))
    assert a.shape == (64, 64, 3) and np.abs(a.astype(int) - b).max() > 0


def test_generate_fpga_refuses_rep_options_for_an_fpga_model_and_foreign_folders(
    tmp_path, capsys, astronaut_path, two_people_pose
):
    from instantportrait.tiny import write_tiny

    fpga = write_tiny(tmp_path / "fpga", "fpga")
    args = ["generate", "--method", "fpga", "--model", str(fpga), "--id-image",
            str(astronaut_path), "--pose", str(two_people_pose), "--prompt", "x"]  # fmt: skip
    assert main([*args, "--control-strength", "0.5", "-o", str(tmp_path / "o")]) == 2
    assert "--control-strength: only for a RepControlNet model" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    args[4] = str(other)
    assert main([*args, "-o", str(tmp_path / "o")]) == 2
    assert "pipeline folder without unet/; fpga needs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_several_images_per_prompt_are_the_single_calls_batched(pipe):
    """diffusers' conventions: num_images_per_prompt with one generator per image equals the
    calls one by one; given latents replace the noise; return_dict=False is a tuple."""
    ids = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0))
    cond = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    kw = {"id_embeds": ids, "num_inference_steps": 2, "output_type": "latent"}
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    both = pipe("a person", cond, num_images_per_prompt=2, generator=gens, **kw).images
    one = [pipe("a person", cond, generator=torch.Generator().manual_seed(s), **kw).images
           for s in (3, 4)]  # fmt: skip
    torch.testing.assert_close(both, torch.cat(one), atol=1e-5, rtol=1e-5)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    (given,) = pipe("a person", cond, latents=noise, return_dict=False, **kw)
    torch.testing.assert_close(given, one[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="latents: expected shape"):
        pipe("a person", cond, latents=torch.zeros(1, 4, 4, 4), **kw)


def test_a_failure_after_loading_leaves_the_old_output_even_with_overwrite(
    tiny_rep, two_people_pose, tmp_path, capsys
):
    """The output is checked before the model loads but replaced only once it has loaded and
    every id image showed a face: a face-free id image removes nothing."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.png").write_bytes(b"earlier result")
    sky = tmp_path / "sky.png"
    Image.new("RGB", (96, 96), (120, 170, 230)).save(sky)
    args = ["generate", "--method", "fpga", "--model", str(tiny_rep), "--id-image", str(sky),
            "--pose", str(two_people_pose), "--prompt", "x", "-o", str(out)]  # fmt: skip
    assert main(args) == 2  # without --overwrite: refused at once
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 2
    assert "no face" in capsys.readouterr().err
    assert (out / "keep.png").read_bytes() == b"earlier result"
