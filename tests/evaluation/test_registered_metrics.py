"""The metrics as registered and run on non-trivial images: preprocessing against PIL, DINO
(v1)'s resize 256 / crop 224 and normalisation, FSC's two variants, FFC per FastFace, item
LPIPS without stretching, batched Intra-LPIPS, FD's sample-count warning."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from instantportrait.evaluation import metric_fns as fns
from instantportrait.evaluation import metrics as M
from instantportrait.evaluation.items import Identity, Subject
from instantportrait.evaluation.methods import Method, MethodSpec
from instantportrait.evaluation.protocols import Prompt
from instantportrait.evaluation.runner import EvaluationConfig, Evaluator
from instantportrait.evaluation.store import ResultStore


def _pil_resize_crop(im: Image.Image, short: int, crop: int) -> torch.Tensor:
    """PIL bicubic resize of the short side to ``short``, centre crop ``crop`` (torchvision's
    Resize(short) + CenterCrop(crop) on a PIL image), as a (1, 3, crop, crop) tensor."""
    w, h = im.size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    r = np.asarray(im.resize((nw, nh), Image.BICUBIC), dtype=np.float32) / 255
    top, left = int(round((nh - crop) / 2)), int(round((nw - crop) / 2))
    return torch.from_numpy(r[top : top + crop, left : left + crop]).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def photo(astronaut_path):
    return Image.open(astronaut_path).convert("RGB").resize((300, 200), Image.LANCZOS)


def test_clip_preprocess_is_pil_bicubic_on_a_real_photo(photo):
    mean = torch.tensor(fns.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(fns.CLIP_STD).view(1, 3, 1, 1)
    ours = fns.clip_preprocess(fns.pil_to_tensor(photo), 64) * std + mean
    ref = _pil_resize_crop(photo, 64, 64)
    # bicubic with antialias matches PIL to its uint8 rounding; bilinear is ~10x further off
    assert (ours - ref).abs().mean() < 0.003 and (ours - ref).abs().max() < 0.03


class _Capture(torch.nn.Module):
    """Stands in for a ViT: records the pixels, returns their per-channel mean as 'CLS'."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = None

    def forward(self, pixel_values):
        self.seen = pixel_values
        cls = pixel_values.mean(dim=(2, 3))
        return type("Out", (), {"last_hidden_state": cls[:, None, :]})()


def test_dino_v1_resizes_to_256_then_crops_224_and_normalises(photo):
    from instantportrait.evaluation.metrics.dino import ViTClsExtractor

    model = _Capture()
    ext = ViTClsExtractor(model)
    # a frame 16 px wide on a 512 image is 8 px at 256 and cut by the 224 crop (16 px a side);
    # resizing straight to 224 would keep it
    img = torch.full((1, 3, 512, 512), 0.25)
    img[..., :16, :] = img[..., -16:, :] = img[..., :, :16] = img[..., :, -16:] = 1.0
    ext(img)
    assert model.seen.shape == (1, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.seen, ((0.25 - mean) / std).expand(1, 3, 224, 224))
    # a real photo: PIL's Resize(256, bicubic) + CenterCrop(224)
    big = photo.resize((600, 400), Image.LANCZOS)
    ext(fns.pil_to_tensor(big))
    ours = model.seen * std + mean
    ref = _pil_resize_crop(big, 256, 224)
    assert (ours - ref).abs().mean() < 0.003


def _hub_with_faces():
    pytest.importorskip("dlib")
    hub = M.ModelHub()
    reason = hub.check(M.METRICS["face_sim_dlib"])
    if reason is not None:
        pytest.skip(reason)
    return hub


def test_fsc_variants_as_registered(portraits, tiny_clip):
    hub = _hub_with_faces()
    hub.weights["clip-vit-l-14"] = tiny_clip
    astronaut, _ = portraits
    out = ImageOps.mirror(astronaut)
    tok = hub.tokenizer()

    def text(t):
        return fns.clip_text_embeddings(tiny_clip, tok, [t])

    styled = "oil painting; a woman in a cafe"
    ctx = M.ItemContext(astronaut, out, styled, hub, input_key="a")
    chip = fns.clip_image_embeddings(tiny_clip, ctx.face_crop("output", "dlib"))
    value = M.METRICS["fsc"].fn(ctx)
    assert value == pytest.approx(float(fns.cosine(chip, text("oil painting"))[0]), abs=1e-5)
    assert value != pytest.approx(float(fns.cosine(chip, text(styled))[0]), abs=1e-4)

    plain = "a woman in a cafe"
    ctx = M.ItemContext(astronaut, out, plain, hub, input_key="a")
    with pytest.raises(M.NotApplicable):
        M.METRICS["fsc"].fn(ctx)
    # the paper's variant: the whole prompt, the detection box resized to 160 x 160
    det = ctx.detection("output")
    x0, y0, x1, y1 = (int(float(v)) for v in det.boxes[0])
    box = out.crop((x0, y0, x1, y1)).resize((160, 160), Image.BILINEAR)
    emb = fns.clip_image_embeddings(tiny_clip, fns.pil_to_tensor(box))
    expected = float(fns.cosine(emb, text(plain))[0])
    assert M.METRICS["fsc_paper"].fn(ctx) == pytest.approx(expected, abs=1e-5)
    assert fns.style_part_paper(styled) == "oil painting"


def test_box_crop_truncates_the_box_as_facenet_pytorch(photo):
    """FastFace's FSC crop is facenet-pytorch's ``extract_face`` with margin 0: the box
    truncated to integers (not rounded) and clipped to the image, then PIL's bilinear resize."""
    from instantportrait.faces.detect import FaceDetections

    ctx = M.ItemContext(photo, photo, "p", M.ModelHub(), input_key="p")
    # fractions above .5, so rounding would move every side by one pixel; x0 < 0 and
    # y1 > height are clipped to the image
    box = torch.tensor([[-3.7, 20.6, 150.8, 260.9]])
    ctx._local[("faces",)] = FaceDetections(box, torch.ones(1), image_size=photo.size)
    expected = photo.crop((0, 20, 150, 200)).resize((160, 160), Image.BILINEAR)
    ours = ctx.box_crop("output", 160)
    assert ours.shape == (1, 3, 160, 160)
    ref = np.asarray(expected, dtype=np.float32) / 255
    np.testing.assert_array_equal(ours[0].permute(1, 2, 0).numpy(), ref)
    rounded = photo.crop((0, 21, 151, 200)).resize((160, 160), Image.BILINEAR)
    assert np.abs(np.asarray(rounded, dtype=np.float32) / 255 - ref).max() > 0.05


class FailsOnSecond(Method):
    """The astronaut for prompt 0; raises for prompt 1."""

    kind = "fails"

    def __init__(self, image):
        super().__init__(MethodSpec("fails", text="fails"))
        self.image = image

    def generate(self, image, prompt, seed, **context):
        if context["prompt_index"] == 1:
            raise RuntimeError("out of memory")
        return self.image


def test_ffc_counts_faceless_references_and_failed_generations(tmp_path, astronaut_path):
    hub = _hub_with_faces()
    small = Image.open(astronaut_path).convert("RGB").resize((256, 256), Image.LANCZOS)
    face_file, grey_file = tmp_path / "astro.png", tmp_path / "grey.png"
    small.save(face_file)
    Image.new("RGB", (128, 128), (128, 128, 128)).save(grey_file)
    out = tmp_path / "run"
    cfg = EvaluationConfig(
        faces=[face_file, grey_file],
        prompts=[Prompt("p0", "all", 0), Prompt("p1", "all", 1)],
        methods={"m": FailsOnSecond(ImageOps.mirror(small))},
        metrics=["ffc", "face_sim_dlib"],
        seeds=[0],
        out=out,
        progress=False,
    )
    Evaluator(cfg, hub=hub).run()
    with ResultStore(out) as store:
        ffc = {(r.face, r.prompt): r for r in store.rows(metric="ffc")}
    # the output has a face, but the grey reference has none: counted (the output-only rule
    # would not count it); failed generations count and stay in the denominator
    assert ffc[("astro", "p0")].value == 0.0
    assert ffc[("grey", "p0")].value == 1.0
    assert ffc[("grey", "p0")].detail["faceless_references"]
    assert ffc[("astro", "p1")].value == 1.0 and ffc[("astro", "p1")].error == "generation failed"
    md = (out / "report.md").read_text()
    assert "3 / 4 (incl. 2 generation failures)" in md
    assert "2 failed to generate" in md


def test_item_lpips_crops_to_the_outputs_aspect_instead_of_stretching(tiny_lpips, rand_images):
    wide = rand_images(1, 64, seed=11)[..., :32, :]  # (1, 3, 32, 64): 2:1
    out = rand_images(1, 32, seed=12)
    hub = M.ModelHub({"lpips": tiny_lpips})
    to_pil = lambda t: Image.fromarray(t[0].mul(255).round().byte().permute(1, 2, 0).numpy())  # noqa: E731
    ctx = M.ItemContext(to_pil(wide), to_pil(out), "p", hub, input_key="w")
    value = M.METRICS["lpips"].fn(ctx)
    centre = ctx.tensor("input")[..., :, 16:48]  # the middle 32 columns, no resize needed
    assert value == pytest.approx(float(tiny_lpips(ctx.tensor("output"), centre)), rel=1e-6)
    stretched = torch.nn.functional.interpolate(
        ctx.tensor("input"), size=(32, 32), mode="bilinear", antialias=True
    )
    assert value != pytest.approx(float(tiny_lpips(ctx.tensor("output"), stretched)), rel=1e-3)


def test_intra_lpips_batches_give_the_mean_over_all_pairs(tiny_lpips, rand_images):
    images = rand_images(7, 16, seed=13)
    by_hand = np.mean(
        [
            float(tiny_lpips(images[i : i + 1], images[j : j + 1]))
            for i, j in itertools.combinations(range(7), 2)
        ]
    )
    for batch in (1, 4, 100):
        assert fns.intra_lpips(tiny_lpips, images, batch_size=batch) == pytest.approx(by_hand)


def test_fd_warns_below_the_feature_dimension_and_reports_counts():
    from instantportrait.evaluation.metrics.fid import FDSampleWarning, frechet_with_counts

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 16, generator=g), torch.randn(12, 16, generator=g)
    with pytest.warns(FDSampleWarning, match="10 outputs and 12 references in 16-D"):
        value, detail = frechet_with_counts(a, b, "FD")
    assert detail == {"n_outputs": 10, "n_references": 12, "dim": 16, "biased": True}
    assert value == pytest.approx(fns.frechet_distance_from_features(a, b))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, detail = frechet_with_counts(torch.randn(40, 4, generator=g), b[:, :4], "FD")
    assert detail["biased"] is False


def test_reference_metrics_compare_with_held_out_photos(tmp_path, tiny_clip, rand_images):
    def save(t, name):
        p = tmp_path / name
        Image.fromarray(t[0].mul(255).round().byte().permute(1, 2, 0).numpy()).save(p)
        return p

    inp, held1, held2 = (save(rand_images(1, 32, s), f"{s}.png") for s in (21, 22, 23))
    subject = Subject("alice", (Identity("alice", (inp,), (held1, held2)),))
    hub = M.ModelHub({"clip-vit-l-14": tiny_clip})
    out_img = Image.open(save(rand_images(1, 32, 24), "out.png")).convert("RGB")
    ctx = M.ItemContext(Image.open(inp).convert("RGB"), out_img, "p", hub, subject=subject)
    value = M.METRICS["clip_i"].fn(ctx)

    def emb(p):
        return fns.clip_image_embeddings(tiny_clip, fns.pil_to_tensor(Image.open(p).convert("RGB")))

    o = fns.clip_image_embeddings(tiny_clip, fns.pil_to_tensor(out_img))
    expected = (float(fns.cosine(o, emb(held1))[0]) + float(fns.cosine(o, emb(held2))[0])) / 2
    assert value == pytest.approx(expected, abs=1e-5)
    assert value != pytest.approx(float(fns.cosine(o, emb(inp))[0]), abs=1e-4)
    # without held-out photos the input is the reference, as before
    plain = Subject("bob", (Identity("bob", (inp,)),))
    ctx = M.ItemContext(Image.open(inp).convert("RGB"), out_img, "p", hub, subject=plain)
    assert M.METRICS["clip_i"].fn(ctx) == pytest.approx(float(fns.cosine(o, emb(inp))[0]), abs=1e-5)


def test_multi_identity_face_similarity_is_per_identity(portraits, tmp_path):
    hub = _hub_with_faces()
    astronaut, grace = (im.resize((256, 256), Image.LANCZOS) for im in portraits)
    a, g = tmp_path / "a.png", tmp_path / "g.png"
    astronaut.save(a)
    grace.save(g)
    pair = Image.new("RGB", (512, 256))
    pair.paste(ImageOps.mirror(grace), (0, 0))
    pair.paste(ImageOps.mirror(astronaut), (256, 0))
    subject = Subject("pair", (Identity("astronaut", (a,)), Identity("grace", (g,))))
    ctx = M.ItemContext(astronaut, pair, "p", hub, subject=subject)
    assert ctx.face_match == "best"
    value = M.METRICS["face_sim_dlib"].fn(ctx)
    per = ctx.detail["identities"]
    assert set(per) == {"astronaut", "grace"}
    assert value == pytest.approx(sum(per.values()) / 2)
    # the single-face rule scores one of them against the other's face
    ctx = M.ItemContext(astronaut, pair, "p", hub, subject=subject, face_match="largest")
    M.METRICS["face_sim_dlib"].fn(ctx)
    single = ctx.detail["identities"]
    assert min(per.values()) > min(single.values()) + 0.05
    assert all(per[k] >= single[k] - 1e-6 for k in per)


class _CropRecorder(torch.nn.Module):
    """An identity 'embedder' that keeps the crops it is shown (template set per test)."""

    def __init__(self, template: str, size: int) -> None:
        super().__init__()
        self.template, self.input_size = template, size
        self.seen: list[torch.Tensor] = []

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        self.seen.append(crops)
        return crops.mean(dim=(2, 3)) + 1.0


def test_face_similarity_sees_the_reference_crops(portraits):
    """ArcFace: insightface's norm_crop on the detector's five keypoints; FaceNet:
    facenet-pytorch's MTCNN box crop; the detector comes from --weights face-detector."""
    from instantportrait.faces.align import norm_crop
    from instantportrait.faces.detect import detect
    from instantportrait.faces.mtcnn import facenet_crop

    _hub_with_faces()
    astronaut, grace = portraits
    arc, fn = _CropRecorder("arcface", 112), _CropRecorder("facenet", 160)
    hub = M.ModelHub({"arcface": arc, "facenet": fn, "face-detector": "mtcnn"})
    ctx = M.ItemContext(grace, astronaut, "p", hub)
    assert ctx.detector().name == "mtcnn"
    M.METRICS["face_sim_arcface"].fn(ctx)
    M.METRICS["face_sim_facenet"].fn(ctx)
    for image, arc_crop, fn_crop in zip((astronaut, grace), arc.seen, fn.seen):  # output, input
        img = np.array(image)
        found = detect(img, method="mtcnn", landmarks="keypoints")
        want = norm_crop(img, found.keypoints[0].numpy(), 112)
        got = (arc_crop[0].permute(1, 2, 0).numpy() * 255).round()
        np.testing.assert_array_equal(got, want)
        want = facenet_crop(img, found.boxes[0].numpy())
        got = (fn_crop[0].permute(1, 2, 0).numpy() * 255).round()
        np.testing.assert_array_equal(got, want)
