"""CodeFormer after DIIR: the enhancer, FaceRestorer(enhancer=), the CLI and the harness."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from instantportrait.cli import main
from instantportrait.errors import InputError
from instantportrait.faces import detect
from instantportrait.restoration.codeformer import CodeFormerEnhancer, load_codeformer_enhancer
from instantportrait.restoration.restorer import FaceRestorer


@pytest.fixture(scope="module")
def codeformer_bundle(tmp_path_factory):
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("cf") / "codeformer", "codeformer", seed=0)


@pytest.fixture(scope="module")
def enhancer(codeformer_bundle) -> CodeFormerEnhancer:
    return load_codeformer_enhancer(codeformer_bundle, 0.5)


class Recorder:
    """A fake model that records its input and returns it (so pre/post-processing is seen)."""

    config = SimpleNamespace(image_size=4)

    def __init__(self):
        self.calls = []
        self.param = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self.param

    def __call__(self, x, fidelity, adain):
        self.calls.append((x.clone(), fidelity, adain))
        return SimpleNamespace(sample=x)


def test_normalisation_matches_official_inference():
    model = Recorder()
    enh = CodeFormerEnhancer(model, fidelity=0.7, batch_size=2)
    white, black = Image.new("RGB", (4, 4), (255, 0, 128)), Image.new("RGB", (4, 4), (0, 0, 0))
    big = Image.new("RGB", (9, 7), (51, 102, 204))
    out = enh([white, black, big])
    # chunks of two; each at the model's size; fidelity and AdaIN passed through
    assert [tuple(c[0].shape) for c in model.calls] == [(2, 3, 4, 4), (1, 3, 4, 4)]
    assert all(c[1] == 0.7 and c[2] is True for c in model.calls)
    x = model.calls[0][0]
    # img / 255, then (x - 0.5) / 0.5
    assert x[0, :, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 255 * 2 - 1], abs=1e-6)
    assert x[1].eq(-1).all()
    # back to [0, 255] (identity model: the input colours) at each crop's own size
    assert [im.size for im in out] == [(4, 4), (4, 4), (9, 7)]
    assert out[0].getpixel((1, 1)) == (255, 0, 128) and out[2].getpixel((4, 3)) == (51, 102, 204)
    # outputs beyond [-1, 1] are clamped
    clamped = CodeFormerEnhancer.postprocess(torch.full((1, 3, 2, 2), 3.0), [(2, 2)])
    assert clamped[0].getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(InputError, match=r"fidelity: must be in \[0, 1\], got 1.5"):
        CodeFormerEnhancer(model, fidelity=1.5)


def test_tiny_enhancer_fidelity_changes_the_face(enhancer, small_astronaut):
    crops = [small_astronaut.crop((80, 20, 160, 100)), small_astronaut.resize((48, 48))]
    out = enhancer(crops)
    assert [im.size for im in out] == [(80, 80), (48, 48)]
    zero = CodeFormerEnhancer(enhancer.model, fidelity=0.0)(crops)
    assert not np.array_equal(np.asarray(out[0]), np.asarray(zero[0]))
    assert enhancer.name == "CodeFormer (w=0.5)"


def _spy_pipeline(resolution: int):
    class Spy:
        config = SimpleNamespace(resolution=resolution)

        def __call__(self, prompt, crops, conds, masks, **kw):
            return SimpleNamespace(images=crops)  # DIIR stand-in: the crops themselves

    return Spy()


def _paste_mask(image: Image.Image) -> np.ndarray:
    """DIIR's paste mask of the one face of ``image`` over the whole image (0 outside)."""
    from instantportrait.restoration.paste import face_crop_box

    found = detect(image, landmarks=68)
    crop = face_crop_box(found.boxes[0], 2.0)
    lm = crop.to_crop(found.landmarks68[0].numpy(), crop.side)
    m = FaceRestorer(None).face_mask(None, lm, crop.side)[0, 0].numpy()
    w, h = image.size
    full = np.zeros((h, w))
    x0, y0, x1, y1 = crop.box
    ys, xs = slice(max(y0, 0), min(y1, h)), slice(max(x0, 0), min(x1, w))
    full[ys, xs] = m[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return full


def test_restorer_enhances_inside_the_mask_only(enhancer, small_astronaut):
    seen = []

    def spy_enhancer(images):
        seen.append([im.size for im in images])
        return enhancer(images)

    plain = FaceRestorer(_spy_pipeline(64), num_inference_steps=1, guidance_scale=1.0)
    enhanced = FaceRestorer(
        _spy_pipeline(64), num_inference_steps=1, guidance_scale=1.0, enhancer=spy_enhancer
    )
    a = plain.restore(small_astronaut, name="a")
    b = enhanced.restore(small_astronaut, name="a")
    assert seen == [[(64, 64)]] and "then the enhancer" in b.notes[-1]
    before, after = np.asarray(small_astronaut).astype(int), np.asarray(b.image).astype(int)
    full = _paste_mask(small_astronaut)
    assert (full == 0).mean() > 0.8
    # outside the paste mask: the input's exact pixels, with or without CodeFormer
    assert np.array_equal(after[full == 0], before[full == 0])
    # inside the face: CodeFormer's output differs from DIIR alone
    diir = np.asarray(a.image).astype(int)
    assert np.abs(after - diir).max(-1)[full > 0.9].mean() > 1.0


def test_enhancer_returning_the_wrong_count_is_an_error(small_astronaut):
    restorer = FaceRestorer(_spy_pipeline(64), enhancer=lambda images: [])
    with pytest.raises(RuntimeError, match="enhancer: 0 crops back for 1 faces"):
        restorer.restore(small_astronaut)


def test_restore_cli_with_codeformer(restore_bundle, small_astronaut, tmp_path, capsys):
    cf = tmp_path / "cf"
    assert main(["init-tiny", str(cf), "--kind", "codeformer"]) == 0
    img = tmp_path / "astro.png"
    small_astronaut.save(img)
    common = ["restore", str(img), "--model", str(restore_bundle), "--steps", "1"]
    assert main([*common, "-o", str(tmp_path / "diir")]) == 0
    argv = [*common, "--codeformer", str(cf), "--codeformer-fidelity", "0.3"]
    assert main([*argv, "-o", str(tmp_path / "both")]) == 0
    assert "then CodeFormer (w=0.3)" in capsys.readouterr().err
    src = np.asarray(small_astronaut).astype(int)
    diir = np.asarray(Image.open(tmp_path / "diir" / "astro.png")).astype(int)
    both = np.asarray(Image.open(tmp_path / "both" / "astro.png")).astype(int)
    # CodeFormer changes the face, and only where DIIR's paste mask reaches: everything else
    # (outside the crop in particular) is bit-identical to the input in both outputs
    mask = _paste_mask(small_astronaut)
    assert (mask == 0).mean() > 0.8
    assert np.array_equal(both[mask == 0], src[mask == 0])
    assert np.array_equal(diir[mask == 0], src[mask == 0])
    assert np.abs(both - diir).max(-1)[mask > 0.9].mean() > 1.0
    # bad fidelity / missing weights: one line, exit 2, nothing written
    bad = [
        *common,
        "--codeformer",
        str(cf),
        "--codeformer-fidelity",
        "2",
        "-o",
        str(tmp_path / "x"),
    ]
    assert main(bad) == 2
    assert "--codeformer-fidelity: must be in [0, 1], got 2.0" in capsys.readouterr().err
    missing = [*common, "--codeformer", str(tmp_path / "none.pth"), "-o", str(tmp_path / "x")]
    assert main(missing) == 2
    assert "--codeformer:" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_restore_option_passes_codeformer(monkeypatch, codeformer_bundle):
    import argparse

    from instantportrait.cli import restore_option

    parser = argparse.ArgumentParser()
    restore_option.add_restore_arguments(parser)
    args = parser.parse_args(
        ["--restore", "--restore-model", "m", "--restore-codeformer", str(codeformer_bundle)]
    )
    assert args.restore_codeformer_fidelity == 0.5
    captured = {}

    def fake_from_pretrained(path, **kwargs):
        captured.update(kwargs)
        return SimpleNamespace(
            pipeline=SimpleNamespace(
                to=lambda **k: None,
                unet=SimpleNamespace(dtype=torch.float32),
                set_progress_bar_config=lambda **k: None,
            )
        )

    monkeypatch.setattr(FaceRestorer, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.setattr(restore_option, "check_restore_models", lambda args: None)  # "m" is fake
    restore_option.build_restorer(args)
    assert isinstance(captured["enhancer"], CodeFormerEnhancer)
    assert captured["enhancer"].fidelity == 0.5
    args = parser.parse_args(
        ["--restore", "--restore-model", "m", "--restore-codeformer-fidelity", "-1"]
    )
    with pytest.raises(InputError, match="--restore-codeformer-fidelity"):
        restore_option.build_restorer(args)
    assert restore_option.build_codeformer(parser.parse_args([]), prefix="restore-") is None


def test_harness_codeformer_setting_is_in_the_key(restore_bundle, codeformer_bundle, tmp_path):
    from instantportrait.evaluation.methods import build_method

    base = f"restore:{restore_bundle},method=identity,restore_steps=1"
    diir = build_method(base)
    both = build_method(f"{base},codeformer={codeformer_bundle}")
    other_w = build_method(f"{base},codeformer={codeformer_bundle},codeformer_fidelity=0.9")
    keys = {m.fingerprint() for m in (diir, both, other_w)}
    assert len(keys) == 3
    assert both.fingerprint_data()["codeformer"]["fidelity"] == 0.5
    assert "codeformer" not in diir.fingerprint_data()
    assert both.cost()["steps"] == diir.cost()["steps"] + 1 == 3 + 1
    both.check()
    assert isinstance(both.restorer.enhancer, CodeFormerEnhancer) and diir.restorer.enhancer is None
    with pytest.raises(InputError, match="codeformer_fidelity: must be in"):
        build_method(f"{base},codeformer={codeformer_bundle},codeformer_fidelity=3").check()
    from instantportrait.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="codeformer"):
        build_method(f"{base},codeformer={tmp_path / 'none.pth'}").check()
