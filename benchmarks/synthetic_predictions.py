"""Synthetic detection results for a COCO/LVIS ground truth, for evaluator tests and benchmarks.

Per image: noisy copies of the ground-truth objects (shifted, scaled, some with the wrong class, some missed), plus
false positives spread over every category (so LVIS's negative / unlisted / not-exhaustive rules all apply), up to
``dets_per_image`` results with scores that only partly agree with quality, as a real detector's would.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_util


def _polygons_of(ann: dict, height: int, width: int) -> list[list[float]] | None:
    segm = ann.get("segmentation")
    if isinstance(segm, list) and segm:
        return segm
    x, y, w, h = ann["bbox"]
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _jitter_polygons(polys, dx, dy, scale, cx, cy):
    out = []
    for p in polys:
        a = np.asarray(p, np.float64).reshape(-1, 2)
        a = (a - (cx, cy)) * scale + (cx + dx, cy + dy)
        out.append(a.reshape(-1).tolist())
    return out


def make_predictions(
    gt: dict,
    dets_per_image: int = 100,
    seed: int = 0,
    with_masks: bool = True,
    miss_rate: float = 0.1,
    wrong_class_rate: float = 0.1,
) -> list[dict]:
    """COCO-style results ``[{"image_id", "category_id", "bbox" (XYWH), "score", "segmentation" (RLE)}, ...]``.

    Args:
        gt: a COCO or LVIS annotation dict (``images``, ``annotations``, ``categories``).
        dets_per_image: results per image (true-positive candidates first, then false positives).
        with_masks: add an RLE ``segmentation`` to every result.
    """
    rng = np.random.default_rng(seed)
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]))
    anns_per_image: dict = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        if ann["image_id"] in anns_per_image:  # ``gt`` may list a subset of the images
            anns_per_image[ann["image_id"]].append(ann)
    results = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        polys, boxes, cats, scores = [], [], [], []
        for ann in anns_per_image[img["id"]]:
            if ann.get("iscrowd", 0) or rng.random() < miss_rate:
                continue
            for _ in range(int(rng.integers(1, 3))):  # sometimes a duplicate
                x, y, bw, bh = ann["bbox"]
                quality = rng.uniform(0, 1)
                noise = (1 - quality) * 0.3
                dx, dy = rng.normal(0, noise * max(bw, 1)), rng.normal(0, noise * max(bh, 1))
                scale = float(np.exp(rng.normal(0, noise)))
                cx, cy = x + bw / 2, y + bh / 2
                polys.append(_jitter_polygons(_polygons_of(ann, h, w), dx, dy, scale, cx, cy))
                boxes.append([cx + dx - bw * scale / 2, cy + dy - bh * scale / 2, bw * scale, bh * scale])
                wrong = rng.random() < wrong_class_rate
                cats.append(int(rng.choice(cat_ids)) if wrong else ann["category_id"])
                scores.append(float(np.clip(0.5 * quality + 0.5 * rng.random(), 0.001, 1.0)))
                if len(boxes) >= dets_per_image:
                    break
        while len(boxes) < dets_per_image:
            bw, bh = rng.uniform(2, w * 0.6), rng.uniform(2, h * 0.6)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes.append([x, y, bw, bh])
            polys.append([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]])
            cats.append(int(rng.choice(cat_ids)))
            scores.append(float(rng.uniform(0.001, 0.6)))
        for k in range(dets_per_image):
            x, y, bw, bh = boxes[k]
            x0, y0 = float(np.clip(x, 0, w)), float(np.clip(y, 0, h))
            x1, y1 = float(np.clip(x + bw, 0, w)), float(np.clip(y + bh, 0, h))
            result = {
                "image_id": img["id"],
                "category_id": cats[k],
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "score": round(scores[k], 5),
            }
            if with_masks:
                clipped = [
                    np.clip(np.asarray(p).reshape(-1, 2), 0, (w, h)).reshape(-1).tolist() for p in polys[k]
                ]
                rle = mask_util.merge(mask_util.frPyObjects(clipped, h, w))
                rle["counts"] = rle["counts"].decode("ascii")
                result["segmentation"] = rle
            results.append(result)
    return results
