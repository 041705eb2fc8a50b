"""COCO and LVIS metrics through faster-coco-eval (C++), with the official evaluators' rules.

``evaluate_results(gt, results, iou_type, style)`` returns the numbers pycocotools (``style="coco"``) or lvis-api
(``style="lvis"``) report for the same results; tests check equality to 1e-6. What this module adds on top of
faster-coco-eval is what the official tools do outside their evaluation loop:

- the results are prepared per IoU type as Detectron2's evaluators do: box results lose their masks, mask results
  lose their boxes (so a mask's area and box come from the mask);
- LVIS keeps the ``max_dets_per_image`` (300) highest-scoring results per image over all categories, ties kept in
  input order (lvis-api's rule), and evaluates at that single max-detections value;
- boundary AP (the LVIS 2021 challenge metric): the IoU of a pair is min(mask IoU, boundary IoU), the boundary
  being the mask minus its erosion by ``dilation_ratio`` x image diagonal pixels (at least 1). faster-coco-eval
  computes it in C++; neither pycocotools nor lvis-api has it (the tests compare against an OpenCV version).

Metrics are fractions in [0, 1], -1 where undefined (no ground truth in that group), as the references report.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Iterable

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm", "boundary")
STYLES = ("coco", "lvis")
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = COCO_METRICS + ("APr", "APc", "APf")
# keys of faster-coco-eval's ``stats_as_dict`` for each metric
_STAT_KEYS = {
    "AP": "AP_all",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
    "APr": "APr",
    "APc": "APc",
    "APf": "APf",
}
LVIS_MAX_DETS = 300
BOUNDARY_DILATION_RATIO = 0.02


def load_ground_truth(gt) -> COCO:
    """A faster-coco-eval ``COCO`` from a json path, an annotation dict or an existing ``COCO``."""
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            gt = json.load(f)
    if not isinstance(gt, dict):
        raise TypeError(
            f"ground truth must be a json path, a dict or a faster_coco_eval.COCO, got {type(gt).__name__}"
        )
    return COCO(gt, print_function=logger.debug)


def limit_detections_per_image(results: Iterable[dict], max_dets: int) -> list[dict]:
    """Keeps the ``max_dets`` highest-scoring results of each image (stable: ties keep input order)."""
    per_image: dict = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    kept = []
    for anns in per_image.values():
        if len(anns) > max_dets:
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        kept.extend(anns)
    return kept


def prepare_results(
    results: Iterable[dict], iou_type: str, max_dets_per_image: int | None = None
) -> list[dict]:
    """Copies of the results fit for ``iou_type``: boxes only for "bbox", masks only for "segm"/"boundary"."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    prepared = []
    for i, r in enumerate(results):
        need = "bbox" if iou_type == "bbox" else "segmentation"
        if need not in r:
            raise KeyError(
                f"result {i} (image_id {r.get('image_id')}) has no '{need}', needed for {iou_type} evaluation"
            )
        prepared.append({k: v for k, v in r.items() if k != drop})
    if max_dets_per_image is not None:
        prepared = limit_detections_per_image(prepared, max_dets_per_image)
    return prepared


def evaluate_results(
    gt,
    results: Iterable[dict],
    iou_type: str = "bbox",
    style: str = "coco",
    max_dets_per_image: int | None = None,
    dilation_ratio: float = BOUNDARY_DILATION_RATIO,
    img_ids: Iterable[int] | None = None,
    return_evaluator: bool = False,
):
    """Evaluates COCO-format results against a COCO or LVIS ground truth.

    Args:
        gt: ground-truth json path, dict or faster-coco-eval ``COCO``.
        results: ``[{"image_id", "category_id", "score", "bbox" (XYWH) and/or "segmentation" (RLE)}]``,
            category ids as in the ground truth.
        iou_type: "bbox", "segm" or "boundary".
        style: "coco" (pycocotools' rules: crowd regions, max dets 1/10/100) or "lvis" (lvis-api's rules:
            negative / not-exhaustive categories, frequency groups, ``max_dets_per_image`` per image).
        max_dets_per_image: COCO: the last max-detections value (default 100); LVIS: per-image cap (default 300).
        dilation_ratio: boundary width as a fraction of the image diagonal ("boundary" only).
        img_ids: evaluate only these images (default: all images of the ground truth).
        return_evaluator: also return the faster-coco-eval evaluator (for per-category precision).

    Returns:
        dict metric -> value in [0, 1] or -1 (``COCO_METRICS``, plus APr/APc/APf for LVIS);
        with ``return_evaluator`` a tuple (metrics, evaluator).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    lvis = style == "lvis"
    if max_dets_per_image is None:
        max_dets_per_image = LVIS_MAX_DETS if lvis else 100
    coco_gt = load_ground_truth(gt)
    dets = prepare_results(results, iou_type, max_dets_per_image if lvis else None)
    # loadRes writes area / id / iscrowd into the results it gets: they are our copies
    coco_dt = coco_gt.loadRes(dets)
    evaluator = COCOeval_faster(
        coco_gt,
        coco_dt,
        iou_type,
        lvis_style=lvis,
        print_function=logger.debug,
        boundary_dilation_ratio=dilation_ratio,
    )
    evaluator.params.maxDets = [max_dets_per_image] if lvis else [1, 10, max_dets_per_image]
    if img_ids is not None:
        evaluator.params.imgIds = sorted(set(img_ids))
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    names = LVIS_METRICS if lvis else COCO_METRICS
    metrics = {name: float(stats[_STAT_KEYS[name]]) for name in names}
    return (metrics, evaluator) if return_evaluator else metrics


def per_category_ap(evaluator: COCOeval_faster) -> dict:
    """{category id: AP over IoU 0.5:0.95, all areas, the last max-dets} (-1 without ground truth)."""
    precision = evaluator.eval[
        "precision"
    ]  # (T iou thresholds, R recall points, K categories, A areas, M max dets)
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[cat_id] = float(np.mean(p)) if p.size else -1.0
    return out
