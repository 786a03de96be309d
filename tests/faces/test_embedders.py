"""Embedders: FaceNet / ArcFace loaders with random weights in the published formats, DINOv2,
the factory and its error lines, and face similarity on the real portraits."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import ImageOps

from instantportrait.errors import InputError, MissingDependencyError, ModelNotFoundError
from instantportrait.faces.arcface import ArcFaceEmbedder, IResNet, iresnet50
from instantportrait.faces.base import IdentityEmbedder
from instantportrait.faces.dino import DinoFeatureExtractor
from instantportrait.faces.embedders import get_embedder, read_state_dict
from instantportrait.faces.facenet import FaceNetEmbedder, InceptionResnetV1


def _crops(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def facenet_files(tmp_path_factory):
    """A random InceptionResnetV1 saved as facenet-pytorch publishes it, and as safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = InceptionResnetV1(num_classes=8631).eval()  # VGGFace2 head, as in the .pt
    _randomise_bn(net, 1)
    folder = tmp_path_factory.mktemp("facenet")
    state = net.state_dict()
    pt = folder / "20180402-114759-vggface2.pt"
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, pt)
    st = folder / "facenet.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("logits.")}, st)
    return net, pt, st


def test_facenet_state_dict_names_are_facenet_pytorchs(facenet_files):
    net, pt, _ = facenet_files
    keys = set(read_state_dict(pt))
    for key in (
        "conv2d_1a.conv.weight",
        "conv2d_1a.bn.running_var",
        "repeat_1.0.branch2.2.conv.weight",
        "mixed_6a.branch1.2.bn.bias",
        "repeat_2.9.branch1.1.conv.weight",
        "repeat_3.4.conv2d.bias",
        "block8.conv2d.weight",
        "last_linear.weight",
        "last_bn.running_mean",
        "logits.weight",
    ):
        assert key in keys, key
    assert sum(v.numel() for k, v in net.state_dict().items() if "logits" not in k) > 23e6


def test_facenet_loads_both_formats_and_matches(facenet_files):
    net, pt, st = facenet_files
    crops = _crops(160)
    with torch.no_grad():
        expected = FaceNetEmbedder(net).eval()(crops)
        for path in (pt, st):
            emb = get_embedder("facenet", weights=path)
            assert isinstance(emb, FaceNetEmbedder) and not emb.training
            assert emb.template == "facenet" and emb.input_size == 160
            out = emb(crops)
            assert out.shape == (2, 512)
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
            e = emb.embed(_crops(120))  # other sizes are resized
            assert e.shape == (2, 512) and torch.allclose(e.norm(dim=-1), torch.ones(2))
    assert all(not p.requires_grad for p in emb.parameters())


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    torch.manual_seed(0)
    net = iresnet50().eval()
    _randomise_bn(net, 2)
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    torch.save(net.state_dict(), path)  # arcface_torch saves backbone.module.state_dict()
    return net, path


def test_arcface_iresnet50_backbone_pth(arcface_file):
    net, path = arcface_file
    keys = set(read_state_dict(path))
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "prelu.weight",
        "layer1.0.downsample.0.weight",
        "layer3.13.conv2.weight",
        "layer4.2.prelu.weight",
        "bn2.weight",
        "fc.weight",
        "features.running_var",
    ):
        assert key in keys, key
    emb = get_embedder("arcface", weights=path)
    assert isinstance(emb, ArcFaceEmbedder)
    assert [len(layer) for layer in (emb.net.layer1, emb.net.layer2, emb.net.layer3)] == [3, 4, 14]
    crops = _crops(112)
    with torch.no_grad():
        torch.testing.assert_close(emb(crops), ArcFaceEmbedder(net).eval()(crops))
        assert emb.embed(crops).shape == (2, 512)


def test_arcface_depth_inferred_and_wrapped_checkpoints(tmp_path):
    from safetensors.torch import save_file

    net = IResNet((1, 1, 2, 1), num_features=64).eval()
    state = net.state_dict()
    st = tmp_path / "small.safetensors"
    save_file(state, st)
    emb = ArcFaceEmbedder.from_weights(st)
    assert len(emb.net.layer3) == 2 and emb.embedding_dim == 64
    # DDP prefixes and {"state_dict": ...} wrappers are unwrapped.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    assert set(read_state_dict(wrapped)) == set(state)
    with pytest.raises(InputError, match="arch"):
        ArcFaceEmbedder.from_weights(st, arch="resnet9000")


class _Payload:
    """A pickled object: ``weights_only`` loading must refuse it."""


def test_weight_errors_are_one_clear_line(tmp_path, monkeypatch, facenet_files):
    monkeypatch.delenv("INSTANTPORTRAIT_FACENET_WEIGHTS", raising=False)
    monkeypatch.delenv("INSTANTPORTRAIT_ARCFACE_WEIGHTS", raising=False)
    for name in ("facenet", "arcface"):
        with pytest.raises(ModelNotFoundError, match="weights=PATH") as info:
            get_embedder(name)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="not found"):
        get_embedder("facenet", weights=tmp_path / "missing.pt")
    with pytest.raises(ModelNotFoundError, match="dlib network not found"):
        get_embedder("dlib", weights=tmp_path / "missing.dat")
    # The environment variable is read when no path is passed.
    monkeypatch.setenv("INSTANTPORTRAIT_FACENET_WEIGHTS", str(facenet_files[2]))
    assert isinstance(get_embedder("facenet"), FaceNetEmbedder)
    # A pickle with code in it is refused, not executed.
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, evil)
    with pytest.raises(InputError, match="cannot read"):
        get_embedder("facenet", weights=evil)
    # The wrong network's weights: named keys, one line.
    wrong = tmp_path / "wrong.pth"
    torch.save(IResNet((1, 1, 1, 1), num_features=8).state_dict(), wrong)
    with pytest.raises(InputError, match="not a FaceNet InceptionResnetV1 state dict"):
        get_embedder("facenet", weights=wrong)
    with pytest.raises(InputError, match="embedder"):
        get_embedder("vggface")


def test_arcface_onnx_needs_onnxruntime(tmp_path):
    model = tmp_path / "w600k_r50.onnx"
    model.write_bytes(b"\x08\x07")
    if importlib.util.find_spec("onnxruntime") is None:
        with pytest.raises(MissingDependencyError, match="onnxruntime"):
            get_embedder("arcface", weights=model)
    else:
        with pytest.raises(InputError, match="ONNX"):
            get_embedder("arcface", weights=model)


def test_dino_tiny_differentiable_and_round_trip(tmp_path):
    dino = DinoFeatureExtractor.from_config()
    crops = _crops(48).requires_grad_(True)
    feats = dino(crops)
    assert feats.shape == (2, dino.feature_dim) == (2, 32)
    feats.pow(2).sum().backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0
    both = DinoFeatureExtractor(dino.model, pooling="cls+mean")
    assert both(crops.detach()).shape == (2, 64)
    dino.model.save_pretrained(tmp_path / "dino")
    loaded = DinoFeatureExtractor.from_pretrained(tmp_path / "dino", image_size=32)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(crops.detach()), dino.eval()(crops.detach()))
    with pytest.raises(ModelNotFoundError, match="DINOv2 model not found"):
        DinoFeatureExtractor.from_pretrained(tmp_path / "nothing-here")
    with pytest.raises(InputError, match="pooling"):
        DinoFeatureExtractor(dino.model, pooling="max")


def test_dlib_embedder_by_name(monkeypatch, tmp_path, dlib_embedder):
    monkeypatch.setenv("INSTANTPORTRAIT_CACHE", str(tmp_path))
    emb = get_embedder("dlib")
    assert isinstance(emb, IdentityEmbedder) and emb.template == "dlib"
    assert emb.same_person_distance == 0.6 and emb.embedding_dim == 128
    assert get_embedder(dlib_embedder) is dlib_embedder


def test_face_similarity_same_and_different(astronaut, grace_hopper, dlib_embedder):
    from instantportrait.faces import FaceAnalyzer, face_similarity

    analyzer = FaceAnalyzer(embedder=dlib_embedder)
    same = face_similarity(astronaut, ImageOps.mirror(astronaut), analyzer=analyzer)
    assert same.same_person is True and same.distance < 0.4 and same.cosine > 0.9
    assert same.threshold == 0.6 and same.embedder == "DlibResNetEmbedder"
    other = face_similarity(astronaut, grace_hopper, analyzer=analyzer)
    assert other.same_person is False and other.distance > 0.6
    assert other.cosine < same.cosine
