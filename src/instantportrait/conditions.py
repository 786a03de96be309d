"""Condition images of FPGA's ID-ControlNet: face landmarks and body skeletons on one canvas.

One renderer serves training, inference and DIIR restoration (spec §2.3, §4.1), so the
ControlNet always sees the same drawing:

* **landmarks**: the face stack's 68 points (300W/dlib order) as white dots of radius 2 px at
  512 px (the radius scales with the canvas's short side), on black;
* **skeleton**: OpenPose-18 (COCO-18) body keypoints, limbs and joints in OpenPose's colours;
* **both**: the skeleton first, the landmarks on top (spec [rec]: one RGB canvas).

Keypoints come as arrays ``(N, 18, 2|3)`` (x, y[, confidence]; a point with confidence <= 0 or a
NaN coordinate is missing) or from JSON (:func:`load_keypoints`): OpenPose's own output
(``people[*].pose_keypoints_2d``, 18 or BODY_25 points), COCO's 17 keypoints (converted, the
neck being the shoulders' midpoint), or a plain list of people.

Stage 3 of the training mixes modes per sample (:data:`STAGE_MODES`): both 0.8, landmark-only
0.1, skeleton-only 0.1, so the landmark-only mode DIIR needs and the skeleton-only mode of
generation keep working.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from .errors import InputError

Mode = Literal["landmark", "skeleton", "both"]
MODES: tuple[str, ...] = ("landmark", "skeleton", "both")

#: training stage -> {mode: probability} (spec §2.3 [rec]); ``all`` runs the three in order.
STAGE_MODES: dict[str, dict[str, float]] = {
    "landmark": {"landmark": 1.0},
    "skeleton": {"skeleton": 1.0},
    "both": {"both": 0.8, "landmark": 0.1, "skeleton": 0.1},
}

#: OpenPose-18 joint names, in order.
OPENPOSE_18 = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)  # fmt: skip

#: the head points (nose, eyes, ears) that locate a face region (spec §3 [rec]).
HEAD_POINTS = (0, 14, 15, 16, 17)

#: OpenPose's 17 limbs as joint-index pairs, drawn in this order.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip

#: OpenPose's 18 drawing colours (joint i and limb i share colour i).
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

#: COCO-17 index of each OpenPose-18 joint (the neck, -1, is the shoulders' midpoint).
COCO17_TO_OPENPOSE18 = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

#: BODY_25 index of each OpenPose-18 joint (BODY_25 adds a mid-hip and feet).
BODY25_TO_OPENPOSE18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


def _scale(size: tuple[int, int], at_512: float) -> int:
    return max(1, round(at_512 * min(size) / 512))


def _as_batch(points: np.ndarray, per_item: int, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != per_item or arr.shape[2] not in (2, 3):
        raise InputError(
            f"{name}: expected shape ({per_item}, 2|3) or (N, {per_item}, 2|3), got {arr.shape}"
        )
    return arr


def _visible(points: np.ndarray) -> np.ndarray:
    """(N, P) bool: finite coordinates and (when given) positive confidence."""
    ok = np.isfinite(points[..., :2]).all(axis=-1)
    if points.shape[-1] == 3:
        ok &= np.nan_to_num(points[..., 2], nan=0.0) > 0
    return ok


def draw_landmarks(canvas: Image.Image, landmarks: np.ndarray) -> Image.Image:
    """Draw 68-point landmarks (``(68, 2)`` or ``(N, 68, 2)``) on ``canvas`` as white dots."""
    pts = _as_batch(landmarks, 68, "landmarks")
    draw = ImageDraw.Draw(canvas)
    r = _scale(canvas.size, 2)
    for face, vis in zip(pts, _visible(pts), strict=True):
        for (x, y), ok in zip(face[:, :2], vis, strict=True):
            if ok:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 255))
    return canvas


def draw_skeleton(canvas: Image.Image, keypoints: np.ndarray) -> Image.Image:
    """Draw OpenPose-18 skeletons (``(18, 2|3)`` or ``(N, 18, 2|3)``) on ``canvas``."""
    kps = _as_batch(keypoints, 18, "keypoints")
    draw = ImageDraw.Draw(canvas)
    width, r = _scale(canvas.size, 8), _scale(canvas.size, 4)
    for person, vis in zip(kps, _visible(kps), strict=True):
        for i, (a, b) in enumerate(LIMBS):
            if vis[a] and vis[b]:
                colour = tuple(int(c * 0.6) for c in COLORS[i])
                draw.line([tuple(person[a, :2]), tuple(person[b, :2])], fill=colour, width=width)
        for j in range(18):
            if vis[j]:
                x, y = person[j, :2]
                draw.ellipse((x - r, y - r, x + r, y + r), fill=COLORS[j])
    return canvas


def render_landmarks(landmarks: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The landmark-only condition image: 68-point landmarks of one or N faces, white on black.

    Args:
        landmarks: ``(68, 2)`` or ``(N, 68, 2)`` pixel coordinates on the target canvas.
        size: the canvas ``(width, height)``.
    Returns:
        An RGB image of ``size``.
    """
    return draw_landmarks(Image.new("RGB", tuple(size), (0, 0, 0)), landmarks)


def render_skeleton(keypoints: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The skeleton-only condition image: OpenPose-18 bodies in OpenPose's colours on black."""
    return draw_skeleton(Image.new("RGB", tuple(size), (0, 0, 0)), keypoints)


def render_condition(
    size: tuple[int, int],
    *,
    landmarks: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    mode: Mode = "both",
) -> Image.Image:
    """The ID-ControlNet's condition image in ``mode`` on one canvas (spec §2.3 [rec]).

    ``landmark`` draws only ``landmarks``, ``skeleton`` only ``keypoints``, ``both`` the
    skeleton then the landmarks on top. A modality that is ``None`` is simply absent.
    """
    if mode not in MODES:
        raise InputError(f"mode: one of {', '.join(MODES)}, got {mode!r}")
    canvas = Image.new("RGB", tuple(size), (0, 0, 0))
    if mode in ("skeleton", "both") and keypoints is not None and len(keypoints):
        draw_skeleton(canvas, keypoints)
    if mode in ("landmark", "both") and landmarks is not None and len(landmarks):
        draw_landmarks(canvas, landmarks)
    return canvas


def draw_mode(stage: str, u: float) -> str:
    """The condition mode of one sample of ``stage`` for a uniform draw ``u`` in [0, 1)."""
    if stage not in STAGE_MODES:
        raise InputError(f"stage: one of {', '.join(STAGE_MODES)}, got {stage!r}")
    edge = 0.0
    modes = list(STAGE_MODES[stage].items())
    for mode, p in modes:
        edge += p
        if u < edge:
            return mode
    return modes[-1][0]


# ---- keypoints ------------------------------------------------------------------------------
def _people_array(people: Sequence[Any], where: str) -> np.ndarray:
    out = []
    for i, person in enumerate(people):
        flat = np.asarray(person, dtype=np.float64).reshape(-1)
        if flat.size % 3 == 0 and flat.size // 3 in (17, 18, 25):
            pts = flat.reshape(-1, 3)
        elif flat.size % 2 == 0 and flat.size // 2 in (17, 18, 25):
            pts = np.concatenate([flat.reshape(-1, 2), np.ones((flat.size // 2, 1))], axis=1)
        else:
            raise InputError(f"{where}: person {i} has {flat.size} numbers, not 17/18/25 points")
        out.append(to_openpose18(pts))
    return np.stack(out) if out else np.zeros((0, 18, 3))


def to_openpose18(points: np.ndarray) -> np.ndarray:
    """One person's COCO-17, OpenPose-18 or BODY_25 points ``(P, 3)`` as OpenPose-18 ``(18, 3)``.

    Points at (0, 0) with zero confidence (OpenPose's "missing") stay missing.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[0] == 18:
        return pts.copy()
    if pts.shape[0] == 25:
        return pts[list(BODY25_TO_OPENPOSE18)].copy()
    if pts.shape[0] != 17:
        raise InputError(f"keypoints: {pts.shape[0]} points; expected 17, 18 or 25")
    out = np.zeros((18, 3))
    for j, c in enumerate(COCO17_TO_OPENPOSE18):
        if c >= 0:
            out[j] = pts[c]
    ls, rs = pts[5], pts[6]
    if ls[2] > 0 and rs[2] > 0:
        out[1] = [(ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, min(ls[2], rs[2])]
    return out


def parse_keypoints(
    data: Any, where: str = "keypoints"
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Keypoints ``(N, 18, 3)`` and the canvas size (if stated) from parsed JSON.

    Accepts OpenPose's output (``{"people": [{"pose_keypoints_2d": [...]}], "canvas_width":
    W, "canvas_height": H}``), a COCO-style ``{"keypoints": [...]}`` / list of those, or a
    plain list of people each a flat or nested list of points.
    """
    try:
        size = None
        if isinstance(data, dict):
            if "canvas_width" in data and "canvas_height" in data:
                size = (int(data["canvas_width"]), int(data["canvas_height"]))
            if "people" in data:
                people = []
                for p in data["people"]:
                    if not isinstance(p, dict) or "pose_keypoints_2d" not in p:
                        raise InputError(f"{where}: each person needs 'pose_keypoints_2d'")
                    people.append(p["pose_keypoints_2d"])
            elif "keypoints" in data:
                people = [data["keypoints"]]
            else:
                raise InputError(f"{where}: expected 'people' (OpenPose) or 'keypoints' (COCO)")
        elif isinstance(data, list):
            people = [p["keypoints"] if isinstance(p, dict) else p for p in data]
        else:
            raise InputError(f"{where}: expected a JSON object or list")
        return _people_array(people, where), size
    except InputError:
        raise  # already one line naming `where` (InputError is a ValueError: not re-wrapped)
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f"{where}: not numeric keypoints ({exc})") from None


def load_keypoints(
    path: str | os.PathLike, name: str | None = None
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Read a keypoints JSON file (see :func:`parse_keypoints`); one line on any error,
    starting with ``name`` (what the user typed, e.g. ``--pose FILE``; default the path)."""
    p = Path(path)
    where = name or str(p)
    if not p.is_file():
        raise InputError(f"{where}: keypoints file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: not a JSON keypoints file ({exc})") from None
    return parse_keypoints(data, where)


def scale_keypoints(keypoints: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Keypoints with coordinates scaled by (sx, sy); confidences kept."""
    out = np.array(keypoints, dtype=np.float64, copy=True)
    out[..., 0] *= sx
    out[..., 1] *= sy
    return out


def head_boxes(
    keypoints: np.ndarray, expand: float = 1.3
) -> list[tuple[float, float, float, float] | None]:
    """Each person's face box from the head points (nose, eyes, ears), grown ``expand``×.

    The box is the head points' bounding square (side = the larger extent, at least the
    eye distance ×2, so a profile face with two points still gets a face-sized box), scaled
    about its centre. ``None`` for a person with fewer than two visible head points.
    """
    kps = _as_batch(keypoints, 18, "keypoints")
    vis = _visible(kps)
    boxes: list[tuple[float, float, float, float] | None] = []
    for person, ok in zip(kps, vis, strict=True):
        idx = [i for i in HEAD_POINTS if ok[i]]
        if len(idx) < 2:
            boxes.append(None)
            continue
        pts = person[idx, :2]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        side = max(float((hi - lo).max()), 1.0)
        if ok[14] and ok[15]:
            side = max(side, 2.0 * float(np.linalg.norm(person[14, :2] - person[15, :2])))
        cx, cy = (lo + hi) / 2
        half = side * expand / 2
        boxes.append((float(cx - half), float(cy - half), float(cx + half), float(cy + half)))
    return boxes


def box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """A float mask ``(H, W)`` in {0, 1}: 1 inside ``box`` = (x0, y0, x1, y1) pixels."""
    w, h = size
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), dtype=np.float32)
    ys = slice(max(0, int(np.floor(y0))), min(h, int(np.ceil(y1))))
    xs = slice(max(0, int(np.floor(x0))), min(w, int(np.ceil(x1))))
    mask[ys, xs] = 1.0
    return mask


def left_to_right(keypoints: np.ndarray) -> list[int]:
    """Indices of the people sorted by the x of their head (else body) centre, left first."""
    kps = _as_batch(keypoints, 18, "keypoints")
    vis = _visible(kps)
    keys = []
    for i, (person, ok) in enumerate(zip(kps, vis, strict=True)):
        idx = [j for j in HEAD_POINTS if ok[j]] or [j for j in range(18) if ok[j]]
        keys.append((float(person[idx, 0].mean()) if idx else float("inf"), i))
    return [i for _, i in sorted(keys)]
