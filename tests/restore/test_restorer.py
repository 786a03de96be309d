"""FaceRestorer on a real face (scikit-image's astronaut shrunk below the trigger)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.faces import detect
from instantportrait.restoration.restorer import FaceRestorer


def _restorer(pipe, **kw):
    kw = {"num_inference_steps": 2, "guidance_scale": 1.0, **kw}
    return FaceRestorer(pipe, **kw)


@pytest.fixture(scope="module")
def restored(diir_pipe, small_astronaut):
    return _restorer(diir_pipe).restore(small_astronaut, name="astronaut")


def test_outside_the_pasted_region_is_bit_identical(restored, small_astronaut, diir_pipe):
    assert len(restored.faces) == 1 and restored.faces[0].identity == "self"
    before = np.asarray(small_astronaut).astype(int)
    after = np.asarray(restored.image).astype(int)
    assert after.shape == before.shape
    x0, y0, x1, y1 = restored.faces[0].crop.box
    outside = np.ones(before.shape[:2], bool)
    outside[max(y0, 0) : y1, max(x0, 0) : x1] = False
    assert np.array_equal(before[outside], after[outside])
    # inside the crop: where the smoothed face mask is 0 the pixels are the input's; where it
    # is small they stay within mask * 255 of it (the paste is an alpha blend); the face moved
    found = detect(small_astronaut, landmarks=68)
    crop = restored.faces[0].crop
    restorer = _restorer(diir_pipe)
    lm = crop.to_crop(found.landmarks68[0].numpy(), crop.side)
    m = restorer.face_mask(None, lm, crop.side)[0, 0].numpy()
    full = np.zeros(before.shape[:2])
    ys, xs = slice(max(y0, 0), min(y1, 256)), slice(max(x0, 0), min(x1, 256))
    full[ys, xs] = m[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    diff = np.abs(after - before).max(-1)
    assert np.all(diff[full == 0] == 0)
    ring = (full > 0) & (full < 0.1)
    assert ring.any() and diff[ring].max() <= 0.1 * 255 + 1  # measured max: see docs
    assert diff[full > 0.9].mean() > 1.0


def test_face_larger_than_threshold_is_untouched(diir_pipe, small_astronaut):
    result = _restorer(diir_pipe, restore_below=30).restore(small_astronaut, name="a")
    assert result.faces == [] and result.skipped == 1
    assert np.array_equal(np.asarray(result.image), np.asarray(small_astronaut))
    assert len(result.notes) == 1 and "none smaller than 30 px" in result.notes[0]


def test_image_without_face_passes_unchanged_with_one_note(diir_pipe):
    blank = Image.new("RGB", (96, 64), (90, 120, 150))
    result = _restorer(diir_pipe).restore(blank, name="blank.png")
    assert np.array_equal(np.asarray(result.image), np.asarray(blank))
    assert result.notes == ["blank.png: no face found; passed through unchanged"]


def test_several_faces_one_batch_and_face_swap(diir_pipe, small_astronaut, grace_hopper_path):
    pair = Image.new("RGB", (512, 256))
    pair.paste(small_astronaut, (0, 0))
    pair.paste(small_astronaut.transpose(Image.FLIP_LEFT_RIGHT), (256, 0))
    calls, seen = [], []

    class Spy:
        config = diir_pipe.config

        def __call__(self, prompt, crops, conds, masks, **kw):
            calls.append((len(crops), tuple(masks.shape), kw["id_embeds"]))
            return SimpleNamespace(images=crops)  # the batch itself: see test_pipeline

    def id_encoder(images):
        seen.extend(im.size for im in images)
        return torch.zeros(len(images), 4, 32)

    hopper = Image.open(grace_hopper_path).convert("RGB")
    restorer = FaceRestorer(Spy(), num_inference_steps=1, guidance_scale=1.0, id_encoder=id_encoder)
    result = restorer.restore(pair, hopper, name="pair")
    assert len(result.faces) == 2 and len(calls) == 1
    assert calls[0][0] == 2 and calls[0][1] == (2, 1, 64, 64)
    assert calls[0][2].shape == (2, 4, 32)
    assert seen == [hopper.size, hopper.size]  # the id image, not the faces themselves
    assert [f.identity for f in result.faces] == ["id image", "id image"]
    # without an encoder the id image is reported unused, and each face keeps its own
    plain = FaceRestorer(Spy(), num_inference_steps=1, guidance_scale=1.0)
    notes = plain.restore(pair, hopper, name="pair").notes
    assert any("no ID encoder" in n for n in notes)


def test_evaluation_restore_method_wraps_another(restore_bundle, small_astronaut):
    from instantportrait.evaluation.methods import build_method

    spec = f"restore:{restore_bundle},method=identity,restore_steps=1,restore_guidance=1"
    method = build_method(spec)
    out = method.generate(small_astronaut, "a prompt", 0, face="astro")
    assert out.size == small_astronaut.size
    assert not np.array_equal(np.asarray(out), np.asarray(small_astronaut))
    assert method.cost() == {"params": 0, "steps": 3}
    method.close()


def test_from_pipeline_shares_components_and_takes_the_id_encoder(diir_pipe):
    from types import SimpleNamespace

    calls = []
    host = SimpleNamespace(
        **{k: getattr(diir_pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet")},
        controlnet=diir_pipe.controlnet,
        scheduler=diir_pipe.scheduler,
        encode_identity=lambda images: calls.append(len(images)) or torch.zeros(1, 4, 32),
    )
    restorer = FaceRestorer.from_pipeline(host, resolution=64)
    assert restorer.pipeline.unet is diir_pipe.unet and restorer.resolution == 64
    restorer.id_encoder([Image.new("RGB", (8, 8))])
    assert calls == [1]


def test_regions_give_each_face_its_persons_identity(diir_pipe, small_astronaut, grace_hopper_path):
    """Two faces (left and right half); person 1's region is the right half, person 2's the
    left: the left face gets id image 2, the right face id image 1 (told apart by size). With
    only person 1's region, the left face is left untouched, bit for bit, with a note."""
    pair = Image.new("RGB", (512, 256))
    pair.paste(small_astronaut, (0, 0))
    pair.paste(small_astronaut.transpose(Image.FLIP_LEFT_RIGHT), (256, 0))
    hopper = Image.open(grace_hopper_path).convert("RGB")
    other = Image.new("RGB", (100, 60), (200, 150, 120))
    seen = []

    class Spy:
        config = diir_pipe.config

        def __call__(self, prompt, crops, conds, masks, **kw):
            return SimpleNamespace(images=[Image.new("RGB", c.size, (255, 0, 0)) for c in crops])

    def id_encoder(images):
        seen.append([im.size for im in images])
        return torch.zeros(len(images), 4, 32)

    restorer = FaceRestorer(Spy(), num_inference_steps=1, guidance_scale=1.0, id_encoder=id_encoder)
    regions = np.zeros((2, 256, 512), np.float32)
    regions[0, :, 256:] = 1  # person 1: right half
    regions[1, :, :256] = 1  # person 2: left half
    result = restorer.restore(pair, [hopper, other], regions=regions, name="pair")
    assert seen == [[other.size, hopper.size]]  # left face: person 2; right face: person 1
    assert [f.identity for f in result.faces] == ["id image 2", "id image 1"]
    seen.clear()
    result = restorer.restore(pair, [hopper], regions=regions[:1], name="pair")
    assert seen == [[hopper.size]] and result.unmatched == 1 and len(result.faces) == 1
    left = np.asarray(result.image)[:, :256]
    assert np.array_equal(left, np.asarray(pair)[:, :256])  # the unmatched face: untouched
    assert not np.array_equal(np.asarray(result.image)[:, 256:], np.asarray(pair)[:, 256:])
    assert any("lie in no person's face region; left untouched" in n for n in result.notes)
