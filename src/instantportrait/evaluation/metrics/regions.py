"""FPGA's multi-identity face-similarity rule, registered as the ``region-iou`` face matcher.

FPGA §8 (spec §8, "Multi-ID rule"): each identity ``k`` has a designated face region; the
generated face with the largest IoU with that region scores identity ``k``'s similarity when
the IoU exceeds 0.5, else identity ``k`` scores 0 (a missing or misplaced face is a failure of
identity placement, not a skipped item). The item's value is the mean over identities (the
harness's rule for every matcher). An identity without a region falls back to the ``best``
rule for that identity (its ``region_iou`` detail is ``null``), except that an output without
any face scores 0 here too instead of failing: under this rule a missing face is a placement
failure, counted in the mean.
"""

from __future__ import annotations

from .context import ItemContext, _mean_cosine, register_face_matcher

__all__ = ["IOU_THRESHOLD", "box_iou", "match_region_iou"]

#: FPGA's threshold: a face counts for a region when their IoU is strictly greater.
IOU_THRESHOLD = 0.5


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (FPGA §8's placement test):
    the overlap's area divided by the area of the boxes' union; 0 for disjoint boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


@register_face_matcher("region-iou")
def match_region_iou(ctx: ItemContext, embedder_key: str) -> dict[str, float]:
    """Each identity against the output face that best overlaps its region (IoU > 0.5), else
    0; identities without a region: the most similar face (``best``)."""
    faces = ctx.all_faces("output")
    boxes = [tuple(float(v) for v in b) for b in faces.boxes] if len(faces) else []
    identities = ctx.subject.identities if ctx.subject is not None else ()
    result: dict[str, float] = {}
    placement: dict[str, float | None] = {}
    for k, name in enumerate(ctx.identity_names()):
        region = identities[k].region if k < len(identities) else None
        refs = ctx.reference_embedding(k, embedder_key)
        if region is None:
            sims = [
                _mean_cosine(ctx.face_embedding("output", embedder_key, index=i), refs)
                for i in range(len(boxes))
            ]
            result[name] = max(sims) if sims else 0.0
            placement[name] = None
            continue
        ious = [box_iou(tuple(region), b) for b in boxes]
        best = max(range(len(ious)), key=ious.__getitem__) if ious else None
        iou = ious[best] if best is not None else 0.0
        placement[name] = round(iou, 4)
        if best is None or iou <= IOU_THRESHOLD:
            result[name] = 0.0
        else:
            out = ctx.face_embedding("output", embedder_key, index=best)
            result[name] = _mean_cosine(out, refs)
    ctx.detail["region_iou"] = placement
    return result
