"""Detectron2's R-CNN meta-architecture with EVA-01's mixed-precision rule for training.

Under autocast (AMP on GPU) the backbone, the ViT and its feature pyramid, runs in reduced precision; the RPN and
the RoI heads run in float32: the features are cast to float32 and autocast is turned off around the heads, as the
authors' training forward does (``EVA-01/det/detectron2/modeling/meta_arch/rcnn.py``). Inference is Detectron2's
forward unchanged (the authors' too).
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

__all__ = ["EVAGeneralizedRCNN"]


@META_ARCH_REGISTRY.register()
class EVAGeneralizedRCNN(GeneralizedRCNN):
    """:class:`~detectron2.modeling.GeneralizedRCNN` whose proposal generator and RoI heads train in float32.

    Args (besides :class:`GeneralizedRCNN`'s):
        fp32_heads: in training, cast the backbone's features to float32 and run the RPN and the RoI heads with
            autocast off (the authors' rule, the default); False runs them under autocast as Detectron2 does.
    """

    @configurable
    def __init__(self, *, fp32_heads: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.fp32_heads = fp32_heads

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["fp32_heads"] = cfg.MODEL.get("EVA", {}).get("FP32_HEADS", True)
        return ret

    def forward(self, batched_inputs):
        if not self.training or not self.fp32_heads:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = {k: v.float() for k, v in self.backbone(images.tensor).items()}
        with torch.autocast(device_type=images.tensor.device.type, enabled=False):
            if self.proposal_generator is not None:
                proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
            else:
                assert "proposals" in batched_inputs[0]
                proposals = [x["proposals"].to(self.device) for x in batched_inputs]
                proposal_losses = {}
            _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)
        return {**detector_losses, **proposal_losses}
