"""COCO and LVIS metrics through faster-coco-eval (C++), with the official evaluators' rules.

``evaluate_results(gt, results, iou_type, style)`` returns the numbers pycocotools (``style="coco"``) or lvis-api
(``style="lvis"``) report for the same results; tests check equality to 1e-6. What this module adds on top of
faster-coco-eval is what the official tools do outside their evaluation loop:

- the results are taken per IoU type as Detectron2's evaluators hand them over: box results are evaluated by their
  box, mask results by their mask, whose area (which decides the area range) comes from the mask;
- LVIS keeps the ``max_dets_per_image`` (300) highest-scoring results per image over all categories, ties kept in
  input order (lvis-api's rule), and evaluates at that single max-detections value; results of categories neither
  present nor negative in their image are dropped before evaluation (lvis-api ignores them); results and ground
  truth of zero area are left out (lvis-api selects annotations with ``area > 0``); a ground-truth ``ignore`` flag
  is honoured and ``iscrowd`` is not (lvis-api's rules, the opposite of pycocotools'); an LVIS file whose images
  lack ``neg_category_ids`` / ``not_exhaustive_category_ids`` is an error naming the file and field (lvis-api
  raises on it);
- boundary AP (the LVIS 2021 challenge metric): the IoU of a pair is min(mask IoU, boundary IoU), the boundary
  being the mask minus its erosion by ``dilation_ratio`` x image diagonal pixels (at least 1). faster-coco-eval
  computes it in C++; neither pycocotools nor lvis-api has it (the tests compare against an OpenCV version).

Metrics are fractions in [0, 1], -1 where undefined (no ground truth in that group), as the references report.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from operator import itemgetter
from typing import Iterable

import numpy as np
import orjson
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as mask_util

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
    """A faster-coco-eval ``COCO`` from a json path, an annotation dict or an existing ``COCO``.

    A dict is used in place: the evaluator adds keys (``ignore``, ``rle``) to its annotations.
    """
    if isinstance(gt, COCO):
        return gt
    source = "<ground-truth dict>"
    if isinstance(gt, (str, os.PathLike)):
        source = str(gt)
        gt = read_json(gt)
    if not isinstance(gt, dict):
        raise TypeError(
            f"ground truth must be a json path, a dict or a faster_coco_eval.COCO, got {type(gt).__name__}"
        )
    coco = COCO(gt, print_function=logger.debug)
    coco.eva_source = source
    return coco


def read_json(path) -> object:
    """A json file's content, parsed by orjson (a 13 MB LVIS-style file: 0.14 s against 0.47 s for the json module,
    a fifth of a whole LVIS evaluation). Files orjson refuses (NaN / Infinity literals, which the json module
    accepts, or malformed text) go to the json module, so the result and any error are the json module's."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


_LVIS_IMAGE_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids")


def lvis_ground_truth(coco_gt: COCO) -> COCO:
    """The ground truth as lvis-api sees it, for the LVIS rules (built once per ground truth and cached).

    Raises ``ValueError`` naming the file, image and field when an image lacks ``neg_category_ids`` or
    ``not_exhaustive_category_ids`` (lvis-api raises a ``KeyError`` there). Annotations of zero area are left out
    (lvis-api keeps ``area > 0``); ``iscrowd`` is cleared (lvis-api never treats a region as a crowd) and the
    ``ignore`` flag kept for :class:`_LVISEval`.
    """
    cached = getattr(coco_gt, "eva_lvis_view", None)
    if cached is not None:
        return cached
    source = getattr(coco_gt, "eva_source", "<ground truth>")
    for img in coco_gt.dataset["images"]:
        for name in _LVIS_IMAGE_FIELDS:
            if name not in img:
                raise ValueError(
                    f"{source}: image {img.get('id')} has no '{name}' field; an LVIS ground truth lists it for "
                    f"every image (lvis-api requires it). Evaluate COCO-format files with style='coco'."
                )
    anns = []
    for a in coco_gt.dataset["annotations"]:
        if not a.get("area", 0) > 0:
            continue
        anns.append(dict(a, iscrowd=0, eva_ignore=int(bool(a.get("ignore", 0)))))
    view = COCO(print_function=logger.debug)
    view.dataset = dict(coco_gt.dataset, annotations=anns)
    view.createIndex()
    view.eva_source = source
    coco_gt.eva_lvis_view = view
    return view


class _LVISEval(COCOeval_faster):
    """faster-coco-eval in LVIS style with lvis-api's ``ignore`` flag (faster-coco-eval, like pycocotools, sets
    ``ignore`` from ``iscrowd``)."""

    def _prepare(self):
        super()._prepare()
        for ann in self.cocoGt.anns.values():
            ann["ignore"] = ann.get("eva_ignore", 0)


def limit_detections_per_image(results: Iterable[dict], max_dets: int) -> list[dict]:
    """Keeps the ``max_dets`` highest-scoring results of each image (ties: earlier first), in input order."""
    results = list(results)
    image_ids = np.array([r["image_id"] for r in results], np.int64)
    keep = _top_k_per_image(image_ids, np.array([r["score"] for r in results], np.float64), max_dets)
    return [results[i] for i in np.flatnonzero(keep)]


def _top_k_per_image(image_ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,): whether a result is among the ``k`` best of its image (stable sort by score, descending)."""
    n = len(image_ids)
    keep = np.ones(n, bool)
    uniq, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
    crowded = counts[inverse] > k  # only images with more than k results need sorting
    if not crowded.any():
        return keep
    sub = np.flatnonzero(crowded)
    order = sub[np.lexsort((sub, -scores[sub], image_ids[sub]))]
    sorted_ids = image_ids[order]
    group_start = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
    rank = np.arange(len(order)) - np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    keep[order] = rank < k
    return keep


def _lvis_listed(coco_gt: COCO, image_ids: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
    """Boolean (N,): whether the category of a result is verified for its image (present or negative).

    lvis-api evaluates a result only for such categories; dropping the others early saves the evaluator the work.
    """
    cats = np.array(sorted(coco_gt.cats), np.int64)
    num_cats = len(cats)

    def codes(img, cat):
        idx = np.clip(np.searchsorted(cats, cat), 0, num_cats - 1)
        return np.where(cats[idx] == cat, img * num_cats + idx, -1)

    gt_anns = coco_gt.dataset["annotations"]
    listed = [
        codes(
            np.array([a["image_id"] for a in gt_anns], np.int64),
            np.array([a["category_id"] for a in gt_anns]),
        )
    ]
    for img in coco_gt.dataset["images"]:
        neg = img.get("neg_category_ids")
        if neg:
            listed.append(codes(np.full(len(neg), img["id"], np.int64), np.asarray(neg, np.int64)))
    result_codes = codes(image_ids, cat_ids)
    return (result_codes >= 0) & np.isin(result_codes, np.concatenate(listed))


def _check_keys(results: list[dict], keys: tuple[str, ...], iou_type: str) -> None:
    for i, r in enumerate(results):
        missing = [k for k in keys if k not in r]
        if missing:
            raise KeyError(
                f"result {i} (image_id {r.get('image_id')}) has no {missing}, needed for {iou_type} evaluation"
            )


def select_results(coco_gt: COCO, results, iou_type: str, style: str, max_dets_per_image: int) -> COCO:
    """The results as a faster-coco-eval ``COCO`` after the reference tool's pre-evaluation rules.

    What ``loadRes`` builds, without its per-result Python work: box results get area w*h, mask results
    (compressed RLE) the mask's area, which decides their area range. LVIS: the ``max_dets_per_image`` best
    results per image are kept (lvis-api's ``LVISResults``), then results of categories neither present nor
    negative in their image are dropped (lvis-api ignores them).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    keys = ("image_id", "category_id", "score", geometry)
    results = list(results)
    try:  # the four fields of every result in one pass
        columns = [list(c) for c in zip(*map(itemgetter(*keys), results))] or [[] for _ in keys]
    except KeyError:
        _check_keys(results, keys, iou_type)
        raise
    img, cat, score, geom = columns
    image_ids = np.array(img, np.int64)
    unknown = set(np.unique(image_ids).tolist()) - set(coco_gt.imgs)
    if unknown:
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(unknown)[:10]}")
    if style == "lvis" and results:
        keep = _lvis_listed(coco_gt, image_ids, np.array(cat, np.int64))
        crowded = np.bincount(np.unique(image_ids, return_inverse=True)[1]).max() > max_dets_per_image
        if crowded:
            keep &= _top_k_per_image(image_ids, np.array(score, np.float64), max_dets_per_image)
        kept = np.flatnonzero(keep).tolist()
        img, cat, score, geom = ([column[i] for i in kept] for column in columns)
    if iou_type == "bbox":
        anns = [
            {
                "image_id": i,
                "category_id": c,
                "score": s,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
                "id": k,
            }
            for k, (i, c, s, b) in enumerate(zip(img, cat, score, geom), 1)
        ]
    else:
        # the box of a mask result is not used by mask or boundary IoU; the area decides its area range
        areas = mask_util.area(list(geom)).tolist() if len(geom) else []
        anns = [
            {"image_id": i, "category_id": c, "score": s, "segmentation": m, "area": a, "iscrowd": 0, "id": k}
            for k, (i, c, s, m, a) in enumerate(zip(img, cat, score, geom, areas), 1)
        ]
    if style == "lvis":  # lvis-api evaluates results of positive area only (a degenerate box, an empty mask)
        anns = [a for a in anns if a["area"] > 0]
    res = COCO(print_function=logger.debug)
    res.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": anns,
    }
    res.createIndex()
    return res


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
    gc_was_enabled = gc.isenabled()
    gc.disable()  # hundreds of thousands of small dicts: collections would cost more than the evaluation
    try:
        metrics, evaluator = _evaluate(
            coco_gt, results, iou_type, style, max_dets_per_image, dilation_ratio, img_ids
        )
    finally:
        if gc_was_enabled:
            gc.enable()
    return (metrics, evaluator) if return_evaluator else metrics


def _evaluate(coco_gt, results, iou_type, style, max_dets_per_image, dilation_ratio, img_ids):
    lvis = style == "lvis"
    if lvis:
        coco_gt = lvis_ground_truth(coco_gt)
    coco_dt = select_results(coco_gt, results, iou_type, style, max_dets_per_image)
    evaluator = (_LVISEval if lvis else COCOeval_faster)(
        coco_gt,
        coco_dt,
        iou_type,
        lvis_style=lvis,
        print_function=logger.debug,
        boundary_dilation_ratio=dilation_ratio,
        rle_iou_max_workers=1,  # the per-pair work holds the GIL: threads only add waiting (measured 10% slower)
    )
    evaluator.params.maxDets = [max_dets_per_image] if lvis else [1, 10, max_dets_per_image]
    if img_ids is not None:
        evaluator.params.imgIds = sorted(set(img_ids))
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    names = LVIS_METRICS if lvis else COCO_METRICS
    return {name: float(stats[_STAT_KEYS[name]]) for name in names}, evaluator


def per_category_ap(evaluator: COCOeval_faster) -> dict:
    """{category id: AP over IoU 0.5:0.95, all areas, the last max-dets} (-1 without ground truth)."""
    # (T iou thresholds, R recall points, K categories, A area ranges, M max-dets values)
    precision = evaluator.eval["precision"]
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[cat_id] = float(np.mean(p)) if p.size else -1.0
    return out
