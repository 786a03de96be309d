"""``instantportrait faces``: detect faces (boxes, scores, landmarks) and compare two faces."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SAME_PERSON_DLIB = 0.6


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "faces",
        help="detect faces and compare identities",
        description="Face detection (dlib HOG/MMOD, SCRFD, MTCNN), landmarks and identity "
        "comparison.",
    )
    cmds = p.add_subparsers(dest="faces_command", required=True, parser_class=type(p))

    d = cmds.add_parser(
        "detect",
        help="find faces: boxes, scores, 5- and 68-point landmarks",
        description="Detect faces in images; print a summary or JSON; optionally draw them.",
    )
    d.add_argument("inputs", nargs="+", help="image files or folders of images")
    d.add_argument("--json", action="store_true", help="print JSON (boxes, scores, landmarks)")
    d.add_argument("--draw", metavar="DIR", help="write annotated PNGs to this folder")
    d.add_argument("--overwrite", action="store_true", help="replace existing drawings")
    _add_detector_arguments(d)
    d.add_argument(
        "--largest", action="store_true", help="keep only the largest face (default: all)"
    )
    d.set_defaults(func=run_detect)

    c = cmds.add_parser(
        "compare",
        help="are two faces the same person?",
        description=(
            "Compare the largest face of two images: cosine similarity of the embeddings, "
            f"dlib distance and a same/different verdict at {SAME_PERSON_DLIB}."
        ),
    )
    c.add_argument("image_a", help="first image")
    c.add_argument("image_b", help="second image")
    c.add_argument(
        "--embedder",
        choices=("dlib", "facenet", "arcface"),
        default="dlib",
        help="identity network (default dlib: offline; the others need --weights)",
    )
    c.add_argument(
        "--weights",
        help="weight file of the embedder (facenet/arcface); for arcface also an insightface "
        "model folder (buffalo_l/, antelopev2/), whose SCRFD then detects",
    )
    c.add_argument(
        "--reference",
        action="store_true",
        help="crop as the reference code: insightface's norm_crop for arcface, facenet-pytorch's "
        "MTCNN box crop for facenet (always on with --detector scrfd / mtcnn: the papers' path)",
    )
    c.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="same-person threshold on the cosine similarity, for facenet/arcface "
        "(dlib uses distance < 0.6)",
    )
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    _add_detector_arguments(c)
    c.set_defaults(func=run_compare)


def _add_detector_arguments(p: argparse.ArgumentParser) -> None:
    from .detector_option import add_detector_arguments

    add_detector_arguments(p, upsample=True)


def _detector(args: argparse.Namespace, face_model: Any = None) -> Any:
    from ..errors import InputError
    from .detector_option import detector_config

    if not 0 <= args.upsample <= 4:
        raise InputError(f"--upsample: between 0 and 4, got {args.upsample}")
    return detector_config(args, face_model)


def _draw(arr: Any, det: Any) -> Any:
    from PIL import Image, ImageDraw

    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 300))
    r = max(1, width)
    for i in range(len(det)):
        x0, y0, x1, y1 = (float(v) for v in det.boxes[i])
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 255, 0), width=width)
        draw.text((x0 + 2, max(0, y0 - 12)), f"{i} {float(det.scores[i]):.2f}", fill=(0, 255, 0))
        for pts, colour in (
            (det.landmarks68, (255, 255, 0)),
            (det.landmarks5, (255, 0, 0)),
            (det.keypoints, (0, 128, 255)),
        ):
            if pts is None:
                continue
            for x, y in pts[i].tolist():
                draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return img


def run_detect(args: argparse.Namespace) -> int:
    from ..faces.detect import detect, images_to_arrays
    from ..io import list_images
    from ..writer import check_output_path, safe_output_path, save_image

    config = _detector(args)
    files = list_images(args.inputs)
    # Every input passes the gate before anything is detected or written.
    arrays, _, _ = images_to_arrays([str(f) for f in files])
    targets = []
    if args.draw:
        # A file, or a path below one, is one line; the folder is made by the first write.
        out_dir = check_output_path(args.draw, kind="dir")
        targets = [
            safe_output_path(out_dir, f"{f.stem}_faces.png", overwrite=args.overwrite)
            for f in files
        ]
    results = []
    for i, (path, arr) in enumerate(zip(files, arrays)):
        det = detect(
            arr,
            method=config,
            select="largest" if args.largest else "all",
            raise_if_none=False,
        )
        det.name = str(path)
        results.append(det)
        if targets:
            save_image(_draw(arr, det), targets[i])
    if args.json:
        report = [r.to_dict() for r in results]
        for entry, target in zip(report, targets):
            entry["drawing"] = str(target)
        print(json.dumps(report, indent=2))
    else:
        for det in results:
            n = len(det)
            print(f"{det.name}: {n} face{'s' if n != 1 else ''}")
            for i in range(n):
                box = ", ".join(f"{float(v):.0f}" for v in det.boxes[i])
                print(f"  face {i}: box ({box})  score {float(det.scores[i]):.3f}")
    if targets:
        print(f"drawings written to {Path(args.draw).resolve()}", file=sys.stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..faces.analyzer import FaceAnalyzer
    from ..faces.similarity import face_similarity
    from ..io import load_image
    from .common import resolve_device

    face_model = args.weights if args.embedder == "arcface" else None
    config = _detector(args, face_model)
    device = resolve_device(args.device)
    # Both images pass the gate before any network is built.
    names = [str(p) for p in (args.image_a, args.image_b)]
    images = [load_image(p, name=p) for p in names]
    weights = args.weights
    if face_model is not None:
        from ..faces.detectors import insightface_pack

        weights = insightface_pack(face_model)[1] or weights
    analyzer = FaceAnalyzer(
        detector=config,
        embedder=args.embedder,
        device=device,
        weights=weights,
        reference=args.reference or config.name in ("scrfd", "mtcnn"),
    )
    analyzer.embedder  # noqa: B018 - build it now: a missing weight file fails before detection
    del images
    res = face_similarity(names[0], names[1], analyzer=analyzer, cosine_threshold=args.threshold)
    if args.json:
        print(
            json.dumps(
                {
                    "image_a": names[0],
                    "image_b": names[1],
                    "embedder": args.embedder,
                    "detector": config.spec,
                    "reference": analyzer.reference,
                    "cosine_similarity": round(res.cosine, 6),
                    "distance": None if res.distance is None else round(res.distance, 6),
                    "threshold": res.threshold,
                    "same_person": res.same_person,
                },
                indent=2,
            )
        )
        return 0
    print(f"cosine similarity: {res.cosine:.4f}")
    if res.distance is not None:
        print(f"dlib distance: {res.distance:.4f} (same person below {res.threshold:g})")
    else:
        print(f"dlib distance: n/a ({args.embedder} embedder)")
    if res.same_person is None:
        print(f"verdict: undecided (no threshold for {args.embedder}; pass --threshold)")
    else:
        print(f"verdict: {'same person' if res.same_person else 'different people'}")
    return 0
