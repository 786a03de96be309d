"""Shared fixtures: tiny components, the bundled portraits, and marker gating.

Markers: ``slow`` runs with INSTANTPORTRAIT_SLOW=1; ``gpu`` needs CUDA; ``weights`` needs real
weights under INSTANTPORTRAIT_WEIGHTS; ``multiprocess`` (several processes through accelerate)
runs by default: two CPU processes take about 15 s.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def pytest_collection_modifyitems(config, items):
    slow = os.environ.get("INSTANTPORTRAIT_SLOW") == "1"
    weights = os.environ.get("INSTANTPORTRAIT_WEIGHTS")
    for item in items:
        if not slow and "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="slow: set INSTANTPORTRAIT_SLOW=1"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "weights" in item.keywords and not weights:
            item.add_marker(pytest.mark.skip(reason="needs INSTANTPORTRAIT_WEIGHTS=DIR"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs torch on one thread: the tests use tiny models, which run as fast on one
    thread, and on a shared or loaded CPU two threads fighting for cores made them 10-160x
    slower (measured on this project's 2-core build machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    return EXAMPLES / "astronaut.png"


@pytest.fixture(scope="session")
def grace_hopper_path() -> Path:
    return EXAMPLES / "grace_hopper.jpg"


@pytest.fixture(scope="session")
def tiny_components():
    from instantportrait.components import build_components

    return build_components("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_components):
    from instantportrait.pipelines import InstantPortraitPipeline

    pipe = InstantPortraitPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipe) -> Path:
    """A tiny pipeline saved as an IPNet-like checkpoint (1 recommended step)."""
    from instantportrait.pipelines import InstantPortraitPipeline

    path = tmp_path_factory.mktemp("models") / "tiny"
    InstantPortraitPipeline(
        **tiny_pipe.components,
        recommended_steps=1,
        default_guidance_scale=1.0,
        default_image_guidance_scale=1.0,
    ).save_pretrained(path)
    return path


def _openpose_person(cx: float) -> list[float]:
    """A standing person at x = ``cx`` on a 64-px canvas: 18 COCO keypoints (head points at
    the top: nose, eyes, ears), flattened as OpenPose's ``pose_keypoints_2d``."""
    import numpy as np

    pts = np.zeros((18, 3))
    pts[:, 0], pts[:, 1], pts[:, 2] = cx, np.linspace(14, 62, 18), 1
    pts[0, :2], pts[14, :2], pts[15, :2] = (cx, 14), (cx - 2, 12), (cx + 2, 12)
    pts[16, :2], pts[17, :2] = (cx - 4, 13), (cx + 4, 13)
    return pts.reshape(-1).tolist()


@pytest.fixture(scope="session")
def openpose_person():
    """``openpose_person(cx)``: one synthetic person's keypoints (see ``_openpose_person``)."""
    return _openpose_person


@pytest.fixture(scope="session")
def two_people_pose(tmp_path_factory) -> Path:
    """An OpenPose JSON on a 64x64 canvas: a person at x=44 listed first, one at x=16."""
    import json

    path = tmp_path_factory.mktemp("pose") / "two.json"
    people = [{"pose_keypoints_2d": _openpose_person(x)} for x in (44, 16)]
    path.write_text(json.dumps({"canvas_width": 64, "canvas_height": 64, "people": people}))
    return path


def _circle_landmarks(cx: float, cy: float, r: float):
    import numpy as np

    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


@pytest.fixture(scope="session")
def portrait_dir(tmp_path_factory):
    """FPGA's portrait dataset (``data build-portraits`` layout), synthetic: four rows of
    64x48 noise with a 16-px 'face', keypoints for two of them (no face detection needed)."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("portraits")
    rng = np.random.default_rng(0)
    for sub in ("images", "faces", "masks"):
        (root / sub).mkdir()
    rows = []
    for i in range(4):
        key = f"{i:04d}"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            root / "images" / f"{key}.png"
        )
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(
            root / "faces" / f"{key}.png"
        )
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / "masks" / f"{key}.png")
        cx = 18 + 8 * i
        kps = np.zeros((1, 18, 3))
        kps[0, :, 0] = cx + rng.normal(0, 6, 18)
        kps[0, :, 1] = 10 + np.arange(18) * 2
        kps[0, :, 2] = 1
        rows.append(
            {
                "key": key,
                "caption": f"a person number {i}",
                "image": f"images/{key}.png",
                "face": f"faces/{key}.png",
                "mask": f"masks/{key}.png",
                "landmarks": _circle_landmarks(cx, 16, 7).round(2).tolist(),
                "face_box": [cx - 8, 8, cx + 8, 24],
                "keypoints": kps.tolist() if i % 2 == 0 else None,
            }
        )
    (root / "portraits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"format": "instantportrait-portraits-1", "face_template": "dlib", "face_size": 224}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def tiny_fpga(tmp_path_factory):
    """A tiny FPGA pipeline folder written by ``init-tiny --kind fpga``'s writer (dlib's real
    recognition weights as its face embedder)."""
    from instantportrait.tiny import write_tiny

    return write_tiny(tmp_path_factory.mktemp("tiny") / "fpga", "fpga")


def fill_hub_cache(cache: Path, repo: str, folder: Path, revision: str = "0" * 40) -> Path:
    """Put ``folder``'s files into ``cache`` as the Hugging Face cache holds a download of
    ``repo``: ``models--org--name/blobs/<sha256>``, ``snapshots/<revision>/<path>`` symlinks
    to the blobs, and ``refs/main`` naming the revision. Returns the snapshot folder."""
    import hashlib
    import os
    import shutil

    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / src.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """``put(repo, folder)``: a fresh Hugging Face cache (``HF_HUB_CACHE``, offline) holding
    ``folder`` as ``repo``; in-process readers and subprocesses both see it."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return lambda repo, folder: fill_hub_cache(cache, repo, Path(folder))
