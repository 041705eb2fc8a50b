"""The authors' test protocol: Soft-NMS as their ``fast_rcnn_inference_single_image`` runs it (mmcv's
``soft_nms`` over class-offset boxes), score threshold 0.0 before it, no cut after it, in memory linear in the
candidates; box scores apart from maskness as an option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from eva_transfer_projects.detection.postprocess import batched_soft_nms, detection_inference

REPO = Path(__file__).resolve().parents[2]


def _authors_soft_nms(boxes, scores, classes, iou_threshold, sigma, min_score, method):
    """mmcv's CPU ``softnms`` loop (offset 0) on boxes shifted apart by class, as the authors call it."""
    boxes = np.asarray(boxes, np.float32).copy()
    offsets = classes.astype(np.float32) * (boxes.max() + 1)
    b = boxes + offsets[:, None]
    x1, y1, x2, y2 = (b[:, i].copy() for i in range(4))
    sc = np.asarray(scores, np.float32).copy()
    areas = (x2 - x1) * (y2 - y1)
    inds = np.arange(len(sc))
    n = len(sc)
    out_scores = []
    i = 0
    while i < n:
        m = i + int(np.argmax(sc[i:n]))  # first maximum
        for arr in (x1, y1, x2, y2, sc, areas, inds):
            arr[i], arr[m] = arr[m], arr[i]
        out_scores.append(sc[i])
        pos = i + 1
        while pos < n:
            w = max(0.0, min(x2[i], x2[pos]) - max(x1[i], x1[pos]))
            h = max(0.0, min(y2[i], y2[pos]) - max(y1[i], y1[pos]))
            inter = np.float32(w * h)
            ovr = inter / (areas[i] + areas[pos] - inter)
            if method == "linear":
                weight = 1 - ovr if ovr >= iou_threshold else 1.0
            else:
                weight = np.exp(-(ovr * ovr) / sigma)
            sc[pos] = np.float32(sc[pos] * weight)
            if sc[pos] < min_score:
                for arr in (x1, y1, x2, y2, sc, areas, inds):
                    arr[pos] = arr[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return inds[:n], np.array(out_scores[:n], np.float32)


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_equals_the_authors(method):
    rng = np.random.default_rng(3)
    n = 300
    xy = rng.uniform(0, 200, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], 1).astype(np.float32)
    boxes[:40] = boxes[40:80] + rng.uniform(-2, 2, (40, 4)).astype(np.float32)  # near duplicates
    scores = rng.uniform(0, 1, n).astype(np.float32) ** 3  # many below the 1e-3 floor
    classes = rng.integers(0, 6, n)
    exp_keep, exp_scores = _authors_soft_nms(boxes, scores, classes, 0.6, 0.5, 1e-3, method)
    keep, new = batched_soft_nms(
        torch.from_numpy(boxes),
        torch.from_numpy(scores),
        torch.from_numpy(classes),
        iou_threshold=0.6,
        method=method,
        sigma=0.5,
        score_floor=1e-3,
    )
    order = np.argsort(-exp_scores, kind="stable")
    assert keep.tolist() == exp_keep[order].tolist()
    np.testing.assert_allclose(new.numpy(), exp_scores[order], rtol=1e-5, atol=1e-7)


_BOUNDED_RUN = r"""
import resource, sys, torch
from eva_transfer_projects.detection.postprocess import detection_inference

torch.manual_seed(0)
r, k = 1000, 80
xy = torch.rand(r, 2) * 1200
boxes = torch.cat([xy, xy + 20 + torch.rand(r, 2) * 300], 1)
scores = torch.softmax(torch.randn(r, k + 1) * 2, 1)
with open("/proc/self/statm") as f:
    pages = int(f.read().split()[0])
now = pages * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (now + int(sys.argv[1]), resource.RLIM_INFINITY))
out = detection_inference(boxes, scores, (1536, 1536), 0.0, 0.5, 100, dict(method="linear", iou_threshold=0.6))
assert bool(torch.all(out.scores[:-1] >= out.scores[1:])) and float(out.scores.min()) >= 1e-3
print(len(out))
"""


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists(), reason="needs Linux /proc for the address-space bound"
)
def test_soft_nms_at_threshold_zero_runs_in_linear_memory():
    """1000 proposals x 80 classes at score threshold 0 (80,000 candidates) under a 512 MiB bound on new address
    space, where one IoU matrix over all candidates would take 26 GB."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _BOUNDED_RUN, str(512 << 20)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = int(proc.stdout.split()[-1])
    assert kept > 100  # every survivor is kept (no cut to 100 after Soft-NMS)


def test_topk_after_soft_nms_is_an_option():
    torch.manual_seed(1)
    r, k = 200, 5
    xy = torch.rand(r, 2) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(r, 2) * 40], 1)
    scores = torch.softmax(torch.randn(r, k + 1), 1)
    soft = dict(method="linear", iou_threshold=0.6)
    full = detection_inference(boxes, scores, (200, 200), 0.0, 0.5, 100, soft)
    cut = detection_inference(boxes, scores, (200, 200), 0.0, 0.5, 100, soft, topk_after_soft_nms=True)
    assert len(full) > 100 and len(cut) == 100
    torch.testing.assert_close(cut.scores, full.scores[:100])


def test_separate_box_scores_from_one_pass():
    from eva_transfer_projects.detection.roi_heads import EVACascadeROIHeads

    inst = Instances((8, 8))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 4, 4], [2, 2, 8, 8]]))
    inst.scores = torch.tensor([0.9, 0.8])
    inst.pred_classes = torch.tensor([0, 1])
    inst.pred_masks = torch.tensor([0.6, 1.0])[:, None, None, None].expand(2, 1, 4, 4).clone()
    heads = EVACascadeROIHeads.__new__(EVACascadeROIHeads)
    torch.nn.Module.__init__(heads)
    heads.maskness_rescoring, heads.maskness_threshold, heads.mask_on = True, 0.5, True
    heads.separate_box_scores = True
    import detectron2.modeling.roi_heads as d2

    original = d2.CascadeROIHeads.forward_with_given_boxes
    d2.CascadeROIHeads.forward_with_given_boxes = lambda self, f, x: x
    try:
        (out,) = heads.forward_with_given_boxes({}, [inst])
    finally:
        d2.CascadeROIHeads.forward_with_given_boxes = original
    # maskness 0.6 and 1.0: mask scores 0.54 and 0.8 (re-sorted), box scores unchanged
    torch.testing.assert_close(out.scores, torch.tensor([0.8, 0.54]))
    torch.testing.assert_close(out.box_scores, torch.tensor([0.8, 0.9]))


def test_evaluator_scores_box_results_with_box_scores(tmp_path, registered):
    from eva_transfer_bench.synthetic_predictions import make_predictions
    from eva_transfer_projects.detection.data import make_synthetic_dataset, register_dataset
    from eva_transfer_projects.detection.evaluation import build_evaluator, evaluate_results

    path = make_synthetic_dataset(
        tmp_path, "val", 12, image_size=(96, 128), fmt="coco", num_classes=4, seed=3
    )
    gt = json.loads(path.read_text())
    registered.append("box_scores_coco")
    register_dataset("box_scores_coco", path, path.parent.parent / "val")
    evaluator = build_evaluator("box_scores_coco")
    rng = np.random.default_rng(0)
    predictions = [
        dict(p, box_score=float(rng.uniform())) for p in make_predictions(gt, dets_per_image=20, seed=4)
    ]
    out = evaluator.evaluate_predictions(predictions)
    boxes = evaluate_results(path, [dict(p, score=p["box_score"]) for p in predictions], "bbox", "coco")
    masks = evaluate_results(path, predictions, "segm", "coco")
    assert out["bbox"]["AP"] == pytest.approx(100 * boxes["AP"], abs=1e-6)
    assert out["segm"]["AP"] == pytest.approx(100 * masks["AP"], abs=1e-6)
    assert abs(boxes["AP"] - evaluate_results(path, predictions, "bbox", "coco")["AP"]) > 1e-3  # it mattered
    # process() carries an instance's box_scores into its results
    inst = Instances((96, 128))
    inst.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0]]))
    inst.scores = torch.tensor([0.25])
    inst.pred_classes = torch.tensor([0])
    inst.box_scores = torch.tensor([0.5])
    evaluator.reset()
    evaluator.process([{"image_id": gt["images"][0]["id"]}], [{"instances": inst}])
    assert evaluator._predictions[0]["score"] == pytest.approx(0.25)
    assert evaluator._predictions[0]["box_score"] == pytest.approx(0.5)
