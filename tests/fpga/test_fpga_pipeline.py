"""FPGAPipeline and ``generate --method fpga``: tiny bundle, multi-ID masks, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main
from instantportrait.errors import InputError
from instantportrait.pipelines.fpga import FPGAPipeline, face_region_masks
from instantportrait.records import read_records


def test_face_region_masks_assign_left_to_right(openpose_person):
    kps = np.stack([np.asarray(openpose_person(x)).reshape(18, 3) for x in (44, 16)])
    masks = face_region_masks(kps, (64, 64), 2)
    assert masks.shape == (2, 64, 64)
    assert masks[0, 13, 16] == 1 and masks[0, 13, 44] == 0  # first identity: leftmost person
    assert masks[1, 13, 44] == 1 and masks[1, 13, 16] == 0
    assert masks[:, 40:].sum() == 0  # face regions only: no identity on the bodies
    with pytest.raises(InputError, match="3 identities but 2 people"):
        face_region_masks(kps, (64, 64), 3)


def test_init_tiny_bundle_loads_and_multi_id_generation_follows_the_masks(tiny_fpga):
    pipe = FPGAPipeline.from_pretrained(str(tiny_fpga))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.default_steps == 30 and pipe.config.default_guidance_scale == 5.0
    g = torch.Generator().manual_seed(0)
    for conv in [*pipe.controlnet.controlnet_down_blocks, pipe.controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.2, generator=g)  # "trained": not zero convs
    ids = torch.randn(2, 4, 32, generator=g)
    cond = Image.fromarray(np.zeros((64, 64, 3), np.uint8))

    def run(**kw):
        return pipe("two people", cond, num_inference_steps=2, output_type="latent",
                    generator=torch.Generator().manual_seed(1), **kw).images  # fmt: skip

    single = run(id_embeds=ids[:1])
    ones = run(id_embeds=ids[:1], id_masks=np.ones((1, 64, 64)))
    torch.testing.assert_close(ones, single)
    zero = run(id_embeds=ids[:1], id_masks=np.zeros((1, 64, 64)))
    torch.testing.assert_close(zero, run(id_embeds=ids[:1], id_scale=0.0))  # no ID term
    assert not torch.allclose(zero, single)
    with pytest.raises(InputError, match="face-region mask"):
        run(id_embeds=ids)


def test_generate_cli_two_identities_from_keypoints(tiny_fpga, two_people_pose, tmp_path, capsys,
                                                    astronaut_path, grace_hopper_path):  # fmt: skip
    pytest.importorskip("dlib")
    out = tmp_path / "gen"
    args = ["generate", "--method", "fpga", "--model", str(tiny_fpga),
            "--id-image", str(astronaut_path), "--id-image", str(grace_hopper_path),
            "--pose", str(two_people_pose), "--prompt", "two people", "--fpga-steps", "1",
            "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "condition.png", "records.json"]
    assert Image.open(out / "0000.png").size == (64, 64)
    # each output records its prompt and seed (the old command recorded neither)
    record = read_records(out)["0000.png"]
    assert (record["prompt"], record["seed"], record["width"]) == ("two people", 0, 64)
    assert record["method"] == "fpga" and record["models"]["model"] == str(tiny_fpga)
    # again into the same folder: refused without --overwrite, nothing touched
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_generate_cli_pose_image_with_two_identities_needs_masks(tiny_fpga, tmp_path, capsys,
                                                                 astronaut_path):  # fmt: skip
    pose = tmp_path / "pose.png"
    Image.new("RGB", (64, 64)).save(pose)
    args = ["generate", "--method", "fpga", "--fpga-model", str(tiny_fpga),
            "--id-image", str(astronaut_path), "--id-image", str(astronaut_path),
            "--pose", str(pose), "--prompt", "x", "-o", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    assert "--face-mask: a pose image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_options_step_aside_when_another_method_owns_the_short_name():
    import argparse

    from instantportrait.cli import generate_fpga

    p = argparse.ArgumentParser()
    p.add_argument_group("--method other").add_argument("--id-image", dest="other_id_image")
    generate_fpga.add_arguments(p.add_argument_group("--method fpga"))
    args = p.parse_args(["--fpga-id-image", "a.png", "--pose", "p.json", "--id-image", "b.png"])
    assert args.fpga_id_image == ["a.png"] and args.fpga_pose == "p.json"
    assert args.other_id_image == "b.png"
    assert generate_fpga.FLAGS["fpga_id_image"] == "--fpga-id-image"
    assert generate_fpga.FLAGS["fpga_pose"] == "--pose"
