"""Per-image detection post-processing at the published test settings, on synthetic detector outputs.

    python -m eva_transfer_bench.postprocess [--repeat 3] [--threads 1] [--no-paste]

- COCO 1536 test (``eva_g_coco_1536_test``): 1000 proposals x 80 classes at score threshold 0, per-class linear
  Soft-NMS (IoU 0.6, floor 1e-3), every survivor kept. Timed: Soft-NMS alone (``batched_soft_nms`` against the
  previous flat version ``batched_soft_nms_reference``, outputs compared bit for bit), the whole
  ``detection_inference`` with each, and Detectron2's soft-NMS-free ``fast_rcnn_inference_single_image``
  (hard NMS 0.5, 100 per image) for scale;
- LVIS 1536 test (``eva_g_lvis_1536_test``): 1000 proposals x 1203 classes, score threshold 0.001, hard NMS 0.5,
  1000 per image: ``detection_inference`` (hard NMS with the candidates grouped by class once) against
  Detectron2's ``fast_rcnn_inference_single_image``, kept boxes compared;
- maskness and mask pasting (Detectron2's ``paste_masks_in_image``, as ``detector_postprocess`` runs it) for the
  kept detections at the test image size (COCO 100 at 1536 x 1536, LVIS 1000 at 1536 x 2048).

Proposals are drawn around 30 objects (boxes jittered around each), class logits favour the object's class, so
the per-class candidate sets overlap as a detector's do. Times are the best of ``repeat`` runs, each pair of
compared functions alternating in this process.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import Tensor

from eva_transfer_bench import measure

IMAGE_SIZES = {"coco": (1536, 1536), "lvis": (1536, 2048)}


def batched_soft_nms_reference(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float = 0.6,
    method: str = "linear",
    sigma: float = 0.5,
    score_floor: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """The previous ``batched_soft_nms``: the same selections over a flat list of live candidates (gathers and
    scatter-reductions per step). The reference the padded product version is benchmarked and tested against;
    its IoU and decay are the product's own helpers, so the two must agree bit for bit."""
    from eva_transfer_projects.detection.postprocess import _checked_or_empty, _soft_nms_decay

    empty = _checked_or_empty(boxes, scores, method)
    if empty is not None:
        return empty
    n = boxes.shape[0]
    _, cls = torch.unique(classes, return_inverse=True)
    num_cls = int(cls.max()) + 1
    boxes_f = boxes.float()
    current = scores.float().clone()
    alive = current >= score_floor
    alive[current.argmax()] = True  # mmcv keeps its first pick whatever its score
    keep, kept_scores = [], []
    while bool(alive.any()):
        live = alive.nonzero().squeeze(1)
        live_cls = cls[live]
        masked = current[live]
        best = torch.full((num_cls,), float("-inf"), device=boxes.device).scatter_reduce(
            0, live_cls, masked, "amax"
        )
        is_best = masked == best[live_cls]
        first = torch.full((num_cls,), n, device=boxes.device).scatter_reduce(
            0, live_cls, torch.where(is_best, live, torch.full_like(live, n)), "amin"
        )
        chosen = first[first < n]
        keep.append(chosen)
        kept_scores.append(current[chosen])
        alive[chosen] = False
        live = live[alive[live]]  # the others, each compared with the box chosen in its class
        if live.numel():
            overlap = iou_with(boxes_f[live], boxes_f[first[cls[live]]])
            current[live] = current[live] * _soft_nms_decay(overlap, method, iou_threshold, sigma)
            alive[live] = current[live] >= score_floor
    keep, new_scores = torch.cat(keep), torch.cat(kept_scores).to(scores.dtype)
    order = new_scores.argsort(descending=True, stable=True)
    return keep[order], new_scores[order]


def iou_with(boxes: Tensor, ref: Tensor) -> Tensor:
    """IoU of each box ``(..., 4)`` with its own reference box (``ref`` broadcasts; no N x N matrix)."""
    lt = torch.maximum(boxes[..., :2], ref[..., :2])
    rb = torch.minimum(boxes[..., 2:], ref[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(dim=-1)
    area_ref = (ref[..., 2:] - ref[..., :2]).clamp(min=0).prod(dim=-1)
    union = area + area_ref - inter
    return torch.where(
        union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union)
    )


def synthetic_outputs(num_proposals: int, num_classes: int, image_size, seed: int = 0, objects: int = 30):
    """(boxes (R, 4), probabilities (R, K + 1), background last) around ``objects`` objects."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    centers = torch.rand(objects, 2, generator=g) * torch.tensor([w, h])
    wh = 16 + torch.rand(objects, 2, generator=g) * min(h, w) / 4
    obj = torch.randint(0, objects, (num_proposals,), generator=g)
    c = centers[obj] + torch.randn(num_proposals, 2, generator=g) * wh[obj] * 0.1
    s = wh[obj] * torch.exp(torch.randn(num_proposals, 2, generator=g) * 0.1)
    boxes = torch.cat([c - s / 2, c + s / 2], 1)
    logits = torch.randn(num_proposals, num_classes + 1, generator=g)
    obj_class = torch.randint(0, num_classes, (objects,), generator=g)
    logits[torch.arange(num_proposals), obj_class[obj]] += 4.0
    logits[:, -1] += 2.0  # background
    return boxes, torch.softmax(logits, 1)


def _alternate(fns: dict, repeat: int) -> tuple[dict, dict]:
    """Best time of each function, the functions alternating run by run."""
    times = {k: float("inf") for k in fns}
    outs = {}
    for _ in range(repeat):
        for k, fn in fns.items():
            outs[k], t = measure.best_time(fn, 1)
            times[k] = min(times[k], t)
    return outs, times


def run(repeat: int = 3, paste: bool = True, seed: int = 0) -> dict:
    import eva_transfer_projects.detection  # noqa: F401

    # isort: split
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image

    from eva_transfer_projects.detection.postprocess import batched_soft_nms, detection_inference, maskness

    report: dict = {}
    # ---- COCO 1536 test: Soft-NMS at score threshold 0
    size = IMAGE_SIZES["coco"]
    boxes, probs = synthetic_outputs(1000, 80, size, seed)
    soft = dict(method="linear", iou_threshold=0.6, sigma=0.5, score_floor=1e-3)
    cand = (probs[:, :-1] > 0.0).nonzero()
    args = (boxes[cand[:, 0]], probs[cand[:, 0], cand[:, 1]], cand[:, 1])
    outs, times = _alternate(
        {
            "fast": lambda: batched_soft_nms(*args, **soft),
            "previous": lambda: batched_soft_nms_reference(*args, **soft),
        },
        repeat,
    )
    identical = all(torch.equal(a, b) for a, b in zip(outs["fast"], outs["previous"]))
    kept = len(outs["fast"][0])
    import eva_transfer_projects.detection.postprocess as pp

    def whole(fn):
        def call():
            saved = pp.batched_soft_nms
            pp.batched_soft_nms = fn
            try:
                return detection_inference(boxes, probs, size, 0.0, 0.5, 100, soft)
            finally:
                pp.batched_soft_nms = saved

        return call

    _, whole_times = _alternate(
        {
            "fast": whole(batched_soft_nms),
            "previous": whole(batched_soft_nms_reference),
            "detectron2_hard_nms": lambda: fast_rcnn_inference_single_image(
                boxes, probs, size, 0.0, 0.5, 100
            ),
        },
        repeat,
    )
    report["coco_soft_nms"] = dict(
        candidates=len(args[0]),
        survivors=kept,
        identical=identical,
        soft_nms_s=times,
        soft_nms_speedup=times["previous"] / times["fast"],
        detection_inference_s=whole_times,
        detection_inference_speedup=whole_times["previous"] / whole_times["fast"],
    )
    # ---- LVIS 1536 test: hard NMS, 1203 classes
    lsize = IMAGE_SIZES["lvis"]
    lboxes, lprobs = synthetic_outputs(1000, 1203, lsize, seed + 1)
    louts, ltimes = _alternate(
        {
            "ours": lambda: detection_inference(lboxes, lprobs, lsize, 0.001, 0.5, 1000),
            "detectron2": lambda: fast_rcnn_inference_single_image(lboxes, lprobs, lsize, 0.001, 0.5, 1000)[
                0
            ],
        },
        repeat,
    )
    report["lvis_hard_nms"] = dict(
        candidates=int((lprobs[:, :-1] > 0.001).sum()),
        kept=len(louts["ours"]),
        identical=bool(torch.equal(louts["ours"].pred_boxes.tensor, louts["detectron2"].pred_boxes.tensor)),
        seconds=ltimes,
        speedup=ltimes["detectron2"] / ltimes["ours"],
    )
    # ---- maskness and pasting of the kept detections
    coco_kept = detection_inference(boxes, probs, size, 0.0, 0.5, 100, soft).pred_boxes.tensor[:100]
    for name, det_boxes, (h, w) in (
        ("coco", coco_kept, size),
        ("lvis", louts["ours"].pred_boxes.tensor, lsize),
    ):
        masks = torch.rand(len(det_boxes), 28, 28, generator=torch.Generator().manual_seed(seed))
        _, t_maskness = measure.best_time(lambda m=masks: maskness(m), repeat)
        entry = dict(masks=len(det_boxes), image=[h, w], maskness_s=t_maskness)
        if paste:
            entry["paste_s"] = measure.time_call(
                lambda m=masks, b=det_boxes, hw=(h, w): paste_masks_in_image(m, b, hw)
            )
            entry["paste_output_gb"] = len(det_boxes) * h * w / 1e9
        report[f"{name}_masks"] = entry
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--no-paste", action="store_true", help="skip mask pasting (its output is N x H x W bytes)"
    )
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.repeat, paste=not args.no_paste)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return report


if __name__ == "__main__":
    main()
