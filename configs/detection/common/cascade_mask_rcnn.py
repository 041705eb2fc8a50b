"""Cascade Mask R-CNN on the EVA-g detection backbone, 80 classes (the authors'
`cascade_mask_rcnn_vitdet_eva.py`; docs/detection.md).

RPN with 2 convs and anchors 32..512 x {0.5, 1, 2}; 512 RoIs per image, 25% positive; RoIAlign 7x7 (box) and
14x14 (mask); 3 stages at IoU 0.5 / 0.6 / 0.7 with box weights (10,10,5,5) / (20,20,10,10) / (30,30,15,15),
class-agnostic; box heads 4 conv + 1 fc with LN, mask head 4 conv with LN. Inference averages the stage scores.
Under AMP the RPN and RoI heads train in float32 (the authors' rcnn.py).
"""

import eva_transfer_projects.detection  # noqa: F401  (Detectron2 stand-ins before detectron2 imports)

# isort: split

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, MaskRCNNConvUpsampleHead

from eva_transfer.presets import build_eva_vit
from eva_transfer_projects.detection.backbone import EVADetectionBackbone
from eva_transfer_projects.detection.meta_arch import EVAGeneralizedRCNN
from eva_transfer_projects.detection.roi_heads import EVACascadeROIHeads

LEVELS = ["p2", "p3", "p4", "p5"]
SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)

model = L(EVAGeneralizedRCNN)(
    backbone=L(EVADetectionBackbone)(
        net=L(build_eva_vit)(preset="eva_g_det", use_act_checkpoint=True),
        out_channels=256,
        square_pad="${dataloader.image_size}",
        freeze_patch_embed=True,
    ),
    proposal_generator=L(RPN)(
        in_features=LEVELS + ["p6"],
        head=L(StandardRPNHead)(in_channels="${...backbone.out_channels}", num_anchors=3, conv_dims=[-1, -1]),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(EVACascadeROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        box_in_features=LEVELS,
        box_pooler=L(ROIPooler)(output_size=7, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
        box_heads=[
            L(FastRCNNConvFCHead)(
                input_shape=L(ShapeSpec)(channels="${.....backbone.out_channels}", height=7, width=7),
                conv_dims=[256, 256, 256, 256],
                fc_dims=[1024],
                conv_norm="LN",
            )
            for _ in range(3)
        ],
        box_predictors=[
            L(FastRCNNOutputLayers)(
                input_shape=L(ShapeSpec)(channels=1024),
                test_score_thresh=0.05,
                test_topk_per_image=100,
                box2box_transform=L(Box2BoxTransform)(weights=weights),
                cls_agnostic_bbox_reg=True,
                num_classes="${...num_classes}",
            )
            for weights in [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
        ],
        proposal_matchers=[
            L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
            for iou in (0.5, 0.6, 0.7)
        ],
        mask_in_features=LEVELS,
        mask_pooler=L(ROIPooler)(output_size=14, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=L(ShapeSpec)(channels="${....backbone.out_channels}", width=14, height=14),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256],  # 4 convs, then the upsampling deconv
            conv_norm="LN",
        ),
        soft_nms=None,
        maskness_rescoring=False,
        override_score_thresh=None,
        topk_after_soft_nms=False,
        separate_box_scores=False,
    ),
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
    fp32_heads=True,  # the authors' AMP rule: RPN and RoI heads train in float32, the backbone in float16
)
