"""EVA-g Cascade Mask R-CNN on LVIS v1 at 1280 px, as the authors' ``LVIS/cascade_mask_rcnn_vitdet_eva.py``
(their ``eva_lvis.pth``, evaluated at 1536 by ``eva_g_lvis_1536_test.py``: 62.2 box / 55.0 mask / 48.3 mask APr).

The COCO recipe with 1203 classes, sigmoid cross-entropy with federated loss (50 classes per step, negatives
weighted by image_count^0.5), repeat-factor sampling (threshold 0.001), lr 2e-4, 75001 iterations with steps at
70k and 75k, 250 warm-up iterations, and up to 300 detections per image above score 0.02 (LVIS's limit).
"""

from .common.lvis import lvis_v1 as _lvis_v1
from .eva_g_coco_1280 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_lvis_v1(dataloader, model)
model.roi_heads.soft_nms = None
model.roi_heads.maskness_rescoring = False

optimizer.lr = 2e-4  # the authors' LVIS config (paper Table 17: 2.5e-5; docs/records/fidelity.md)
train.max_iter = 75001
lr_multiplier.steps = [70000, 75000]
lr_multiplier.warmup_iters = 250
train.output_dir = "./output/eva_g_lvis_1280"
