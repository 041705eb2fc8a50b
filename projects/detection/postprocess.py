"""Test-time post-processing options: Soft-NMS and maskness rescoring.

Both are plain functions on tensors, used by :class:`eva_transfer_projects.detection.roi_heads.EVACascadeROIHeads` when its
config enables them; Detectron2's own inference is not modified. Hard NMS goes through :func:`batched_nms`,
Detectron2's result computed with the candidates grouped by class once (faster with LVIS's 1203 classes).
"""

from __future__ import annotations

import torch
from detectron2.layers import batched_nms as _detectron2_batched_nms
from detectron2.structures import Boxes, Instances
from torch import Tensor
from torchvision.ops import box_iou, nms

__all__ = [
    "batched_nms",
    "soft_nms",
    "batched_soft_nms",
    "detection_inference",
    "maskness",
    "rescore_by_maskness",
]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Detectron2's ``batched_nms`` (hard NMS per class), the same indices in the same order, faster on many
    candidates.

    On a CPU with more than 1000 boxes torchvision runs NMS class by class, finding each class's boxes with a
    comparison over all candidates (1203 LVIS classes x 280,000 candidates at score threshold 0.001 is 3.4e8
    comparisons, most of the time). Here the candidates are grouped by class once (a stable sort, so each class's
    boxes keep their input order) and each class's NMS runs on its slice: the same per-class ``nms`` calls on the
    same inputs, the same keep mask, and torchvision's final sort by score. Elsewhere (fewer boxes, CUDA) this is
    Detectron2's function.
    """
    boxes = boxes.float()
    if boxes.device.type != "cpu" or boxes.numel() <= 4000 or torch.jit.is_tracing():
        return _detectron2_batched_nms(boxes, scores, idxs, iou_threshold)
    order = idxs.argsort(stable=True)
    counts = torch.unique_consecutive(idxs[order], return_counts=True)[1].tolist()
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for members in order.split(counts):
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]


def _soft_nms_decay(overlap: Tensor, method: str, iou_threshold: float, sigma: float) -> Tensor:
    """Score multiplier for boxes overlapping the kept one: linear (``1 - IoU`` from the threshold on, IoU >=
    threshold as in mmcv's ``soft_nms`` the authors call) or gaussian (``exp(-IoU^2 / sigma)``)."""
    if method == "linear":
        return torch.where(overlap >= iou_threshold, 1.0 - overlap, torch.ones_like(overlap))
    return torch.exp(-(overlap * overlap) / sigma)


def _checked_or_empty(boxes: Tensor, scores: Tensor, method: str) -> tuple[Tensor, Tensor] | None:
    """The argument check every Soft-NMS shares: an unknown ``method`` is an error, and no boxes give the empty
    ``(keep, scores)`` result (``None`` when there is work to do)."""
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft-NMS method must be 'linear' or 'gaussian', got {method!r}")
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long), scores.new_zeros(0)
    return None


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.6,
    method: str = "linear",
    sigma: float = 0.5,
    score_floor: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017) over one set of boxes.

    Repeatedly takes the highest-scoring box and decays the scores of the others by their IoU with it:
    ``linear``: ``s *= 1 - iou`` where ``iou > iou_threshold``; ``gaussian``: ``s *= exp(-iou^2 / sigma)``.
    Boxes whose score falls below ``score_floor`` are dropped.

    Args:
        boxes: ``(N, 4)`` x1y1x2y2. scores: ``(N,)``.
    Returns:
        ``keep`` ``(K,)`` indexes into the input, in selection order (non-increasing decayed score), and the
        decayed scores ``(K,)``.
    """
    empty = _checked_or_empty(boxes, scores, method)
    if empty is not None:
        return empty
    iou = box_iou(boxes.float(), boxes.float())
    current = scores.float().clone()
    alive = current >= score_floor
    keep, kept_scores = [], []
    neg_inf = torch.tensor(float("-inf"), device=scores.device)
    while bool(alive.any()):
        i = int(torch.where(alive, current, neg_inf).argmax())
        keep.append(i)
        kept_scores.append(current[i])
        alive[i] = False
        overlap = iou[i]
        current = torch.where(
            alive, current * _soft_nms_decay(overlap, method, iou_threshold, sigma), current
        )
        alive &= current >= score_floor
    return torch.tensor(keep, dtype=torch.long, device=boxes.device), torch.stack(kept_scores).to(
        scores.dtype
    )


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float = 0.6,
    method: str = "linear",
    sigma: float = 0.5,
    score_floor: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """:func:`soft_nms` applied per class (``classes``: ``(N,)`` ints); boxes of different classes never interact.

    The candidates above ``score_floor`` are laid out as a padded ``(classes, candidates of the largest class)``
    batch, each row in input order, and all classes advance together: one selection per class per step (the
    first maximum of its row, so ties go to the earlier input), then the IoU of every live box of a row with the
    box just chosen in that row decays it. No Python loop runs over candidates and no IoU matrix is formed: the
    batch is at most as large as the ``(proposals, classes)`` score matrix the candidates come from (1000
    proposals x 80 classes at score threshold 0 are 80,000 candidates), and it is compacted (dead entries and
    finished classes dropped, order kept) whenever half of it is dead. Returns ``keep`` sorted by decayed score
    (descending, ties in selection order) and the decayed scores; the arithmetic is that of the previous flat
    version (``eva_transfer_bench.postprocess.batched_soft_nms_reference``), so the outputs are identical to it.
    """
    empty = _checked_or_empty(boxes, scores, method)
    if empty is not None:
        return empty
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(
            "batched_soft_nms: scores must be finite (detection_inference drops non-finite rows)"
        )
    device = boxes.device
    _, cls = torch.unique(classes, return_inverse=True)
    num_cls = int(cls.max()) + 1
    current = scores.float()
    alive = current >= score_floor
    alive[current.argmax()] = True  # mmcv keeps its first pick whatever its score
    cand = alive.nonzero().squeeze(1)
    cand = cand[cls[cand].argsort(stable=True)]  # grouped by class, input order within a class
    cand_cls = cls[cand]
    counts = torch.bincount(cand_cls, minlength=num_cls)
    present = counts > 0
    row_of_cls = torch.cumsum(present.long(), 0) - 1
    counts = counts[present]
    rows, width = int(counts.numel()), int(counts.max())
    row = row_of_cls[cand_cls]
    col = torch.arange(cand.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[row]
    # one (rows, width) plane per quantity; dead entries score -inf, so a row's maximum is over its live boxes
    index = torch.full((rows, width), -1, dtype=torch.long, device=device)
    index[row, col] = cand
    score = torch.full((rows, width), float("-inf"), device=device)
    score[row, col] = current[cand]
    live = index >= 0
    planes = torch.zeros((5, rows, width), device=device)  # x1, y1, x2, y2, area
    cand_boxes = boxes.float()[cand]
    planes[:4, row, col] = cand_boxes.t()
    planes[4, row, col] = (cand_boxes[:, 2:] - cand_boxes[:, :2]).clamp(min=0).prod(dim=1)
    tiny = torch.finfo(torch.float32).tiny
    keep, kept_scores = [], []
    while True:
        best, j = score.max(dim=1)  # first maximum of each row: ties go to the earlier input
        has = live.gather(1, j[:, None]).squeeze(1)
        keep.append(index.gather(1, j[:, None]).squeeze(1)[has])
        kept_scores.append(best[has])
        live.scatter_(1, j[:, None], False)
        x1, y1, x2, y2, area = planes
        rx1, ry1, rx2, ry2, rarea = planes.gather(2, j[None, :, None].expand(5, -1, 1))
        # IoU with the row's chosen box; eva_transfer_bench.postprocess's reference computes the same terms
        inter = (torch.minimum(x2, rx2) - torch.maximum(x1, rx1)).clamp(min=0) * (
            torch.minimum(y2, ry2) - torch.maximum(y1, ry1)
        ).clamp(min=0)
        union = area + rarea - inter
        overlap = torch.where(union > 0, inter / union.clamp(min=tiny), torch.zeros_like(union))
        score = score * _soft_nms_decay(overlap, method, iou_threshold, sigma)
        live &= score >= score_floor
        score = torch.where(live, score, float("-inf"))
        alive_per_row = live.sum(dim=1)
        longest = int(alive_per_row.max())
        if longest == 0:
            break
        if 2 * longest <= width or bool((alive_per_row == 0).any()):
            # keep the rows with live boxes and their live entries, in order (ties still go to the earlier input)
            keep_rows = alive_per_row > 0
            order = (~live[keep_rows]).to(torch.uint8).argsort(dim=1, stable=True)[:, :longest]
            index = index[keep_rows].gather(1, order)
            score = score[keep_rows].gather(1, order)
            live = live[keep_rows].gather(1, order)
            planes = planes[:, keep_rows].gather(2, order[None].expand(5, -1, -1))
            width = longest
    keep, new_scores = torch.cat(keep), torch.cat(kept_scores).to(scores.dtype)
    order = new_scores.argsort(descending=True, stable=True)
    return keep[order], new_scores[order]


def detection_inference(
    boxes: Tensor,
    scores: Tensor,
    image_size: tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk: int,
    soft_nms_cfg: dict | None = None,
    topk_after_soft_nms: bool = False,
) -> Instances:
    """Per-image detections from class-agnostic boxes and class probabilities, with NMS or Soft-NMS.

    Args:
        boxes: ``(R, 4)`` (class-agnostic) or ``(R, 4K)`` predicted boxes.
        scores: ``(R, K + 1)`` probabilities, background last.
        soft_nms_cfg: ``dict(method=, iou_threshold=, sigma=, score_floor=)`` to use Soft-NMS; None: hard NMS.
        topk_after_soft_nms: cut Soft-NMS's output to ``topk`` too. The EVA-01 detectors keep every Soft-NMS
            survivor (their ``fast_rcnn_inference_single_image`` returns before the cut), so the evaluator's own
            limit decides; hard NMS is always cut to ``topk``.
    Returns:
        ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes`` (hard NMS: at most ``topk`` if
        ``topk >= 0``), sorted by score.
    """
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[valid], scores[valid, :-1]
    num_reg = boxes.shape[1] // 4
    b = Boxes(boxes.reshape(-1, 4))
    b.clip(image_size)
    boxes = b.tensor.view(-1, num_reg, 4)
    mask = scores > score_thresh
    inds = mask.nonzero()
    boxes = boxes[inds[:, 0], 0] if num_reg == 1 else boxes[mask]
    scores = scores[mask]
    classes = inds[:, 1]
    if soft_nms_cfg is None:
        keep = batched_nms(boxes, scores, classes, nms_thresh)
    else:
        keep, scores_kept = batched_soft_nms(boxes, scores, classes, **soft_nms_cfg)
        scores = scores.clone()
        scores[keep] = scores_kept
    if topk >= 0 and (soft_nms_cfg is None or topk_after_soft_nms):
        keep = keep[:topk]
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep]
    result.pred_classes = classes[keep]
    return result


def maskness(mask_probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Mean foreground probability of each mask over its pixels above ``threshold``.

    Args:
        mask_probs: ``(N, [1,] H, W)`` probabilities in [0, 1].
    Returns:
        ``(N,)``; 0 for a mask without any pixel above the threshold.
    """
    p = mask_probs.flatten(1).float()
    fg = (p > threshold).float()
    return (p * fg).sum(1) / fg.sum(1).clamp(min=1.0)


def rescore_by_maskness(instances: Instances, threshold: float = 0.5) -> Instances:
    """Multiplies ``scores`` by :func:`maskness` of ``pred_masks`` (probabilities) and re-sorts by the new score."""
    if len(instances) == 0:
        return instances
    instances.scores = instances.scores * maskness(instances.pred_masks, threshold).to(instances.scores.dtype)
    return instances[instances.scores.argsort(descending=True, stable=True)]
