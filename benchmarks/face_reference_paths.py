"""Face paths, default against reference: the figures of docs/faces.md, as JSON.

    PYTHONPATH=src python benchmarks/face_reference_paths.py [--out results/faces.json]

Two groups of numbers on the repository's photos (astronaut, grace_hopper, and grace_hopper
upscaled 3x, whose face is shrunk more than 2x into a 112-px crop):

* ``parity`` (needs the extra ``reference``: insightface, onnx, opencv-python-headless): our
  reference path against the reference code on random networks exported to ONNX here: SCRFD
  decoding (box and keypoint differences in px), ``norm_crop`` (8-bit levels), ArcFace
  embeddings (cosine, a plain and an mxnet-style network), the whole SCRFD + ArcFace path.
* ``default_vs_reference``: what the default path changes against the reference one, with
  random networks (no weights reach this machine; random features are smooth, so these
  cosines understate what trained networks show): the antialiased differentiable warp
  against ``norm_crop`` on the same points; dlib-derived keypoints against MTCNN's; FaceNet's
  template crop against facenet-pytorch's MTCNN box crop (cosine and the eye distance in the
  160-px crop, a weight-free measure of the framing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "faces"))


def _photos() -> dict[str, np.ndarray]:
    a = np.array(Image.open(ROOT / "examples/astronaut.png").convert("RGB"))
    g = Image.open(ROOT / "examples/grace_hopper.jpg").convert("RGB")
    g3 = g.resize((g.width * 3, g.height * 3), Image.Resampling.BICUBIC)
    return {"astronaut": a, "grace_hopper": np.array(g), "grace_hopper_x3": np.array(g3)}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255.0


def parity(photos: dict[str, np.ndarray]) -> dict:
    """Ours against insightface / OpenCV (random networks)."""
    try:
        import cv2  # noqa: F401
        from insightface.app.common import Face
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.model_zoo.scrfd import SCRFD
        from insightface.utils import face_align
        from parity_models import SyntheticScrfd, TinyRecogniser, as_mxnet_conversion, export
    except ImportError as exc:
        return {"skipped": f"reference extra not installed ({exc})"}
    from instantportrait.faces.align import norm_crop
    from instantportrait.faces.analyzer import FaceAnalyzer
    from instantportrait.faces.arcface import ArcFaceOnnxEmbedder
    from instantportrait.faces.detect import detect
    from instantportrait.faces.detectors import FaceDetectorConfig
    from instantportrait.faces.scrfd import ScrfdDetector

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        det_path, rec_path = Path(tmp) / "det_10g.onnx", Path(tmp) / "w600k_r50.onnx"
        mx_path = Path(tmp) / "mx.onnx"
        export(SyntheticScrfd(), det_path, (1, 3, 640, 640))
        export(TinyRecogniser(), rec_path, (1, 3, 112, 112), dynamic_batch=True)
        export(TinyRecogniser(True), mx_path, (1, 3, 112, 112), dynamic_batch=True)
        as_mxnet_conversion(mx_path)
        ours, ref = ScrfdDetector(det_path), SCRFD(str(det_path))
        ref.prepare(-1, input_size=(640, 640), det_thresh=0.5)
        box_d = kps_d = 0.0
        n = 0
        for img in photos.values():
            b, _, k = ours(img)
            rb, rk = ref.detect(img[:, :, ::-1].copy(), input_size=(640, 640))
            box_d = max(box_d, float(np.abs(b - rb[:, :4]).max()))
            kps_d = max(kps_d, float(np.abs(k - rk).max()))
            n += len(b)
        out["scrfd_decoder"] = {"faces": n, "max_box_px": box_d, "max_keypoint_px": kps_d}
        levels, frac, cos_plain, cos_mx = 0, 0.0, 1.0, 1.0
        rec_plain, rec_mx = ArcFaceONNX(str(rec_path)), ArcFaceONNX(str(mx_path))
        ours_plain, ours_mx = ArcFaceOnnxEmbedder(rec_path), ArcFaceOnnxEmbedder(mx_path)
        for img in photos.values():
            kps = detect(img, method="mtcnn", landmarks="keypoints").keypoints[0].numpy()
            for size in (112, 224):
                d = np.abs(
                    norm_crop(img, kps, size).astype(int) - face_align.norm_crop(img, kps, size)
                )
                levels, frac = max(levels, int(d.max())), max(frac, float((d > 0).mean()))
            crop = _tensor(norm_crop(img, kps, 112))
            bgr = img[:, :, ::-1].copy()
            for rec, emb, key in ((rec_plain, ours_plain, "p"), (rec_mx, ours_mx, "m")):
                c = _cos(rec.get(bgr, Face(kps=kps)), emb(crop).numpy())
                if key == "p":
                    cos_plain = min(cos_plain, c)
                else:
                    cos_mx = min(cos_mx, c)
        out["norm_crop"] = {"max_levels": levels, "max_fraction_of_values_off": frac}
        out["arcface_onnx_min_cosine"] = {"plain": cos_plain, "builtin_normalisation": cos_mx}
        analyzer = FaceAnalyzer(
            detector=FaceDetectorConfig("scrfd", det_path),
            embedder=ours_plain,
            template="arcface",
            reference=True,
            min_size=0,
        )
        worst = 1.0
        for img in photos.values():
            faces = analyzer.analyze(img)
            rb, rk = ref.detect(img[:, :, ::-1].copy(), input_size=(640, 640))
            for i in range(min(3, len(rb))):
                face = min(faces, key=lambda f, i=i: float(np.abs(f.box.numpy() - rb[i, :4]).max()))
                want = rec_plain.get(img[:, :, ::-1].copy(), Face(kps=rk[i]))
                worst = min(worst, _cos(want, face.embedding.numpy()))
        out["scrfd_arcface_pipeline_min_cosine"] = worst
    return out


def default_vs_reference(photos: dict[str, np.ndarray]) -> dict:
    """The default path against the reference one (random networks)."""
    from instantportrait.faces.align import crop_faces, estimate_norm, norm_crop
    from instantportrait.faces.arcface import iresnet50
    from instantportrait.faces.detect import detect
    from instantportrait.faces.facenet import FaceNetEmbedder
    from instantportrait.faces.mtcnn import facenet_crop

    torch.manual_seed(0)
    arc = iresnet50().eval()
    facenet = FaceNetEmbedder().eval()
    out: dict = {}
    for name, img in photos.items():
        t = _tensor(img)
        dl = detect(img, select="largest", landmarks=True)
        mt = detect(img, method="mtcnn", landmarks="keypoints")
        kd, km = dl.keypoints[0], mt.keypoints[0]
        with torch.no_grad():

            def arcface(crop: torch.Tensor) -> np.ndarray:
                return arc((crop - 0.5) / 0.5)[0].numpy()

            ref = arcface(_tensor(norm_crop(img, km.numpy(), 112)))
            warp = arcface(crop_faces(t, km[None], "arcface", points="keypoints"))
            pts = arcface(_tensor(norm_crop(img, kd.numpy(), 112)))
            m = estimate_norm(km.numpy(), 112)
            moved = (kd.numpy() - km.numpy()) @ m[:, :2].T  # the shift, in crop pixels
            shift = float(np.linalg.norm(moved, axis=1).max())
            tpl = crop_faces(t, kd[None], "facenet", points="keypoints")
            box = _tensor(facenet_crop(img, mt.boxes[0].numpy()))
            fn_tpl, fn_box = facenet.embed(tpl)[0].numpy(), facenet.embed(box)[0].numpy()
        w = float(mt.boxes[0, 2] - mt.boxes[0, 0])
        eye_px = float(np.linalg.norm(km[1] - km[0]))
        out[name] = {
            "arcface_antialiased_warp_vs_norm_crop": _cos(warp, ref),
            "arcface_dlib_keypoints_vs_mtcnn_keypoints": _cos(pts, ref),
            "keypoint_shift_in_112_crop_px": shift,
            "facenet_template_crop_vs_mtcnn_box_crop": _cos(fn_tpl, fn_box),
            "eye_distance_160_template_px": float(
                np.linalg.norm(np.diff(_facenet_template_eyes(), axis=0))
            ),
            "eye_distance_160_mtcnn_crop_px": eye_px * 160 / w,
        }
    return out


def _facenet_template_eyes() -> np.ndarray:
    from instantportrait.faces.align import TEMPLATES

    return TEMPLATES["facenet"].targets(5, 160, "keypoints")[:2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args()
    photos = _photos()
    result = {"parity": parity(photos), "default_vs_reference": default_vs_reference(photos)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
