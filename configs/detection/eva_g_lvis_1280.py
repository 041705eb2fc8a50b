"""EVA-g Cascade Mask R-CNN on LVIS v1 at 1280 px, as the authors' ``LVIS/cascade_mask_rcnn_vitdet_eva.py``
(their ``eva_lvis.pth``, evaluated at 1536 by ``eva_g_lvis_1536_test.py``: 62.2 box / 55.0 mask / 48.3 mask APr).

The COCO recipe with 1203 classes, sigmoid cross-entropy with federated loss (50 classes per step, negatives
weighted by image_count^0.5), repeat-factor sampling (threshold 0.001), lr 2e-4, 75001 iterations with steps at
70k and 75k, 250 warm-up iterations, and up to 300 detections per image above score 0.02 (LVIS's limit).
"""

from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from eva_transfer_projects.detection.class_frequency import FedLossClassWeights, repeat_factors

from .eva_g_coco_1280 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(repeat_factors)(dataset_names="${dataloader.train.dataset.names}", repeat_thresh=0.001)
)

model.roi_heads.num_classes = 1203
model.roi_heads.soft_nms = None
model.roi_heads.maskness_rescoring = False
for _predictor in model.roi_heads.box_predictors:
    _predictor.use_sigmoid_ce = True
    _predictor.use_fed_loss = True
    _predictor.fed_loss_num_classes = 50
    _predictor.get_fed_loss_cls_weights = L(FedLossClassWeights)(
        dataset_names="${dataloader.train.dataset.names}", freq_weight_power=0.5
    )
    _predictor.test_score_thresh = 0.02
    _predictor.test_topk_per_image = 300

optimizer.lr = 2e-4  # the authors' LVIS config (paper Table 17: 2.5e-5; docs/records/fidelity.md)
train.max_iter = 75001
lr_multiplier.steps = [70000, 75000]
lr_multiplier.warmup_iters = 250
train.output_dir = "./output/eva_g_lvis_1280"
