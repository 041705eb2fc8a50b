"""Cascade RoI heads with the EVA test-time options.

Training is Detectron2's :class:`~detectron2.modeling.roi_heads.CascadeROIHeads` unchanged. At inference the
three stages' class probabilities are averaged and the boxes of the last stage are kept (as in Detectron2), then
hard NMS or, when configured, Soft-NMS selects the detections; optionally the mask scores rescore them
(maskness).
"""

from __future__ import annotations

from typing import Optional

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import CascadeROIHeads

from .postprocess import detection_inference, rescore_by_maskness

__all__ = ["EVACascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class EVACascadeROIHeads(CascadeROIHeads):
    """Cascade RoI heads with Soft-NMS and maskness rescoring as options.

    Args (besides :class:`CascadeROIHeads`'s):
        soft_nms: ``dict(method="linear", iou_threshold=0.6, sigma=0.5, score_floor=1e-3)`` to replace hard NMS
            at inference; None keeps hard NMS (the box predictor's ``test_nms_thresh``).
        maskness_rescoring: multiply each detection's score by the mean mask probability over its pixels above
            ``maskness_threshold``, then re-sort. The score is shared by the box and the mask result, as in the
            authors' code (their LVIS box AP includes maskness).
        override_score_thresh: the score threshold before NMS / Soft-NMS at inference, replacing the box
            predictors' ``test_score_thresh`` (the authors evaluate COCO with 0.0); None keeps the predictors'.
        topk_after_soft_nms: also cut Soft-NMS's output to ``test_topk_per_image`` (the authors do not: every
            survivor goes to the evaluator, whose own limit applies).
        separate_box_scores: with maskness rescoring, keep the score before rescoring as ``box_scores``; the
            evaluators score box results with it and mask results with the rescored ``scores`` (box AP without
            maskness and mask AP with it from one inference pass; an option beyond the authors' protocol).
    """

    @configurable
    def __init__(
        self,
        *,
        soft_nms: Optional[dict] = None,
        maskness_rescoring: bool = False,
        maskness_threshold: float = 0.5,
        override_score_thresh: Optional[float] = None,
        topk_after_soft_nms: bool = False,
        separate_box_scores: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.soft_nms = dict(soft_nms) if soft_nms else None
        self.maskness_rescoring = maskness_rescoring
        self.maskness_threshold = maskness_threshold
        self.override_score_thresh = override_score_thresh
        self.topk_after_soft_nms = topk_after_soft_nms
        self.separate_box_scores = separate_box_scores

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        test = cfg.MODEL.get("EVA", {}).get("TEST", {})
        if test.get("SOFT_NMS", False):
            ret["soft_nms"] = dict(
                method=test.get("SOFT_NMS_METHOD", "linear"),
                iou_threshold=test.get("SOFT_NMS_IOU", 0.6),
                sigma=test.get("SOFT_NMS_SIGMA", 0.5),
                score_floor=test.get("SOFT_NMS_SCORE_FLOOR", 1e-3),
            )
        ret["maskness_rescoring"] = test.get("MASKNESS", False)
        ret["override_score_thresh"] = test.get("OVERRIDE_SCORE_THRESH", None)
        ret["topk_after_soft_nms"] = test.get("TOPK_AFTER_SOFT_NMS", False)
        ret["separate_box_scores"] = test.get("SEPARATE_BOX_SCORES", False)
        return ret

    def _forward_box(self, features, proposals, targets=None):
        if self.training:
            return super()._forward_box(features, proposals, targets)
        feats = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        probs_per_stage, prev_boxes = [], None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
            predictions = self._run_stage(feats, proposals, k)
            prev_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            probs_per_stage.append(self.box_predictor[k].predict_probs(predictions, proposals))
        last = self.box_predictor[-1]
        score_thresh = (
            last.test_score_thresh if self.override_score_thresh is None else self.override_score_thresh
        )
        results = []
        for i, size in enumerate(image_sizes):
            scores = sum(p[i] for p in probs_per_stage) / self.num_cascade_stages
            results.append(
                detection_inference(
                    prev_boxes[i],
                    scores,
                    size,
                    score_thresh,
                    last.test_nms_thresh,
                    last.test_topk_per_image,
                    self.soft_nms,
                    self.topk_after_soft_nms,
                )
            )
        return results

    def forward_with_given_boxes(self, features, instances):
        instances = super().forward_with_given_boxes(features, instances)
        if self.maskness_rescoring and self.mask_on:
            if self.separate_box_scores:
                for x in instances:
                    x.box_scores = x.scores.clone()
            instances = [rescore_by_maskness(x, self.maskness_threshold) for x in instances]
        return instances
