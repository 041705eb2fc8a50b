"""EVA-02-L Cascade Mask R-CNN on LVIS v1 at 1536 px from the Objects365 model, as the authors'
``eva2_o365_to_lvis/eva2_o365_to_lvis_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py`` (their
``eva02_L_lvis_sys_o365``: 65.2 box / 57.3 mask AP; docs/model_zoo_eva02.md).

The COCO 1536 recipe (``eva02_l_coco_1536.py``) with 1203 classes, sigmoid cross-entropy with federated loss
(50 classes per step, weights image_count^0.5), repeat-factor sampling (threshold 0.001), 70k iterations with
700 warm-up iterations (1%), up to 300 detections per image above score 0.02, checkpoints and evaluation every 5k.
Test: the authors' README command, Soft-NMS per class and maskness (threshold 0.5) for both box and mask AP,
the evaluator keeping 1000 detections per image. ``train.init_checkpoint``: ``eva02_L_in21k_to_o365.pth``.
"""

from .common.lvis import lvis_v1 as _lvis_v1
from .eva02_l_coco_1536 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_lvis_v1(dataloader, model)
dataloader.evaluator.max_dets_per_image = 1000
model.roi_heads.override_score_thresh = None  # the LVIS command keeps the config's 0.02
model.roi_heads.maskness_rescoring = True

train.max_iter = 70000
lr_multiplier.warmup_iters = 700  # warmup_length 0.01 of 70000
train.eval_period = 5000
train.checkpointer.period = 5000
train.output_dir = "./output/eva02_l_lvis_1536"
