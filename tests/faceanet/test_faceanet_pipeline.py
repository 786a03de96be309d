"""FaceA-Net generation: reload identity, bit-exact paste-back, T'_id segments, no-face path,
the prompt split, and the CLI."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from instantportrait.cli import main
from instantportrait.models.feat_embeddings import identity_conditioning, task_prompt
from instantportrait.pipelines.faceanet import FaceANetPipeline, NoFaceWarning
from instantportrait.records import read_records


@pytest.fixture(scope="module")
def pipe(tuned):
    p = FaceANetPipeline.from_identity(tuned)
    p.set_progress_bar_config(disable=True)
    return p


def test_saved_identity_reloads_to_identical_outputs(trainer_factory, photos, tmp_path):
    tr = trainer_factory(tmp_path / "r", training={"max_steps": 1})
    final = tr.fit(resolved_config={})
    trained = tr.pipeline()  # the in-memory weights after tuning
    reloaded = FaceANetPipeline.from_identity(tmp_path / "r")  # the saved files
    for p in (trained, reloaded):
        p.set_progress_bar_config(disable=True)
    assert torch.equal(trained.feats.vectors, reloaded.feats.vectors)
    lora_a = {k: v for k, v in trained.unet.state_dict().items() if "lora_" in k}
    lora_b = {k: v for k, v in reloaded.unet.state_dict().items() if "lora_" in k}
    assert len(lora_a) == len(lora_b) > 0
    image = Image.open(photos[0]).convert("RGB").resize((64, 64))
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1

    def paint(p):
        return np.asarray(
            p.inpaint(
                image,
                mask,
                "a woman",
                num_inference_steps=2,
                generator=torch.Generator().manual_seed(0),
            )
        )

    assert np.array_equal(paint(trained), paint(reloaded))
    assert (final / "faceanet.json").is_file()


@pytest.mark.parametrize("variant", ["plain", "flipped", "cropped"])
def test_pixels_outside_the_paste_mask_are_the_context_bit_for_bit(
    pipe, astronaut_path, grace_hopper_path, variant
):
    src = Image.open(grace_hopper_path if variant == "cropped" else astronaut_path).convert("RGB")
    if variant == "flipped":
        src = ImageOps.mirror(src)
    if variant == "cropped":
        src = src.crop((40, 0, 500, 420))
    src = src.resize((src.width // 2, src.height // 2))
    out = pipe(
        "a woman smiling",
        context_image=src,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.faces_found == [True]
    result = np.asarray(out.images[0])
    context = np.asarray(src)
    alpha = out.paste_masks[0]
    assert result.shape == context.shape
    outside = alpha == 0
    assert outside.any() and (~outside).any()
    assert np.array_equal(result[outside], context[outside])
    # inside, the face was repainted (random tiny weights: anything but the photo)
    assert not np.array_equal(result[alpha > 0.5], context[alpha > 0.5])
    assert set(out.timings) == {"context", "detection", "inpainting"}


def test_conditioning_is_the_concatenated_segments(pipe):
    te, tok, feats = pipe.text_encoder, pipe.tokenizer, pipe.feats
    cond, uncond, segments = identity_conditioning(te, tok, feats, "a woman, smiling", "woman")
    names = [s[0] for s in segments]
    assert names == ["id_prompt", "face", "left_eye", "right_eye", "nose", "mouth"]
    assert cond.shape == uncond.shape == (1, 6 * 77, 32)
    assert [(s, e) for _, s, e in segments] == [(77 * k, 77 * (k + 1)) for k in range(6)]
    with torch.no_grad():

        def enc(text):
            ids = tok([text], padding="max_length", max_length=77, return_tensors="pt").input_ids
            return te(ids)[0][0], ids[0]

        plain, _ = enc("a woman, smiling")
        assert torch.allclose(cond[0, :77], plain, atol=1e-6)
        empty, _ = enc("")
        assert torch.allclose(uncond[0], empty.repeat(6, 1), atol=1e-6)
        n = feats.config.num_vectors
        for k, task in enumerate(["face", "left_eye", "right_eye", "nose", "mouth"]):
            seg = cond[0, 77 * (k + 1) : 77 * (k + 2)]
            base, ids = enc(task_prompt("woman", task))
            p0 = int((ids == tok.eos_token_id).nonzero()[0]) + 1
            assert torch.equal(seg[p0 : p0 + n], feats.vectors[k])  # the learned [feat] slots
            keep = torch.ones(77, dtype=torch.bool)
            keep[p0 : p0 + n] = False
            assert torch.allclose(seg[keep], base[keep], atol=1e-6)  # the rest is E(T_v)
    # trim_padding keeps BOS..EOS of T_id and BOS..EOS + n feat slots of each task
    c2, u2, seg2 = identity_conditioning(te, tok, feats, "a woman", "woman", trim_padding=True)
    lengths = [e - s for _, s, e in seg2]
    assert lengths[0] == 4 and lengths[1] == 5 + n and lengths[2] == 6 + n
    assert c2.shape == u2.shape == (1, sum(lengths), 32)


def test_face_free_context_returns_the_context_with_one_warning(pipe):
    from instantportrait.pipelines.faceanet_context import tiny_sdxl_pipeline

    sdxl = tiny_sdxl_pipeline()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pipe(
            "a woman in a park",
            context_pipeline=sdxl,
            context_kwargs={"num_inference_steps": 1, "height": 64, "width": 64},
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
        )
    faces = [w for w in caught if issubclass(w.category, NoFaceWarning)]
    assert len(faces) == 1 and "no face" in str(faces[0].message)
    assert out.faces_found == [False] and out.paste_masks == [None]
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(out.context_images[0]))
    assert out.images[0].size == (64, 64)


def test_cli_generate_context_image_and_no_face_warning(tuned, astronaut_path, tmp_path, capsys):
    out_dir = tmp_path / "gen"
    code = main(
        [
            "generate",
            "--method",
            "faceanet",
            "--identity",
            str(tuned),
            "--prompt",
            "a woman smiling",
            "--context-image",
            str(astronaut_path),
            "--inpaint-steps",
            "1",
            "-o",
            str(out_dir),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rec = read_records(out_dir)["0000.png"]
    assert rec["face_found"] and rec["split_prompts"]["id"] == "a woman, smiling"
    assert rec["context_file"] == "0000_context.png" and rec["seed"] == 0
    assert (out_dir / "0000.png").is_file() and (out_dir / "0000_context.png").is_file()
    # a tiny context model draws no face: one warning line, the context returned
    code = main(
        [
            "generate",
            "--method",
            "faceanet",
            "--identity",
            str(tuned),
            "--prompt",
            "a woman in a park",
            "--context-model",
            "tiny",
            "--context-steps",
            "1",
            "--context-size",
            "64",
            "--inpaint-steps",
            "1",
            "-o",
            str(tmp_path / "g2"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "no face" in lines[0]
    # an option of the method without the identity is one clear line
    code = main(
        [
            "generate",
            "--method",
            "faceanet",
            "--prompt",
            "x",
            "--context-model",
            "tiny",
            "-o",
            str(tmp_path / "g3"),
        ]
    )
    assert code == 2 and "--identity" in capsys.readouterr().err


def test_face_index_picks_a_face_among_many(pipe, astronaut_path, grace_hopper_path):
    a = Image.open(astronaut_path).convert("RGB").resize((256, 256))
    g = Image.open(grace_hopper_path).convert("RGB").crop((0, 30, 512, 542)).resize((256, 256))
    both = Image.new("RGB", (512, 256))
    both.paste(a, (0, 0))
    both.paste(g, (256, 0))
    kwargs = {"context_image": both, "num_inference_steps": 1}
    right = pipe("a woman", face_index=1, **kwargs).paste_masks[0]
    left = pipe("a woman", face_index=0, **kwargs).paste_masks[0]
    assert right[:, 256:].sum() > 0 and right[:, :256].sum() == 0
    assert left[:, :256].sum() > 0 and left[:, 256:].sum() == 0
    with pytest.raises(ValueError, match="face_index: 5 but 2 face"):
        pipe("a woman", face_index=5, **kwargs)


def test_training_photo_without_a_face_is_one_line(tuned, tiny_base, tmp_path, capsys):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (128, 128), (120, 120, 120)).save(blank)
    code = main(
        [
            "train",
            "faceanet",
            "--images",
            str(blank),
            "--gender",
            "man",
            "--base",
            str(tiny_base),
            "-o",
            str(tmp_path / "r"),
            "--set",
            "data.resolution=64",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "wall.png" in err and "no face" in err


def test_cli_generate_seeds_follow_the_one_rule_across_prompts(tuned, tmp_path, capsys):
    # FaceA-Net used seed + k for every prompt, so two prompts repeated the same noise
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a woman in a park\na woman on a beach\n")
    out = tmp_path / "g"
    code = main(
        ["generate", "--method", "faceanet", "--identity", str(tuned), "--prompt-file",
         str(prompts), "--context-model", "tiny", "--context-steps", "1", "--context-size", "64",
         "--inpaint-steps", "1", "--seed", "4", "-o", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    records = read_records(out)
    assert [(r["prompt"], r["seed"]) for r in records.values()] == [
        ("a woman in a park", 4),
        ("a woman on a beach", 5),
    ]
    assert records["0001.png"]["models"]["identity"] == str(tuned)
