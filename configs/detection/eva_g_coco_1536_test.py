"""EVA-g COCO model evaluated at 1536 px for box AP, as the authors' ``COCO/cascade_mask_rcnn_vitdet_eva_1536.py``
with their box command line (``--eval-only train.init_checkpoint=eva_coco_det.pth``: 64.2 box AP).

The 1280-trained model; its global blocks' relative-position tables are resized 159 -> 191 with the authors'
"beit" rule (cubic over geometric offsets, ratio 1.0903078) when the checkpoint loads; every test image is padded
to 1536 x 1536, so the grid is always 96 x 96. Test protocol: score threshold 0.0, Soft-NMS (linear, IoU 0.6,
min score 1e-3) per class, every survivor kept (the evaluator's 100 per image applies), no maskness.
``model.roi_heads.maskness_rescoring=True model.roi_heads.separate_box_scores=True`` gives box AP without and mask
AP with maskness from one pass (an option beyond the authors' protocol).
"""

from .common.soft_nms import soft_nms as _soft_nms
from .eva_g_coco_1280 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.image_size = 1536
model.backbone.net.img_size = 1536
train.checkpoint_load.rel_pos_resize = "beit"
model.roi_heads.soft_nms = _soft_nms
model.roi_heads.override_score_thresh = 0.0
model.roi_heads.topk_after_soft_nms = False
model.roi_heads.maskness_rescoring = False
train.init_checkpoint = "./checkpoints/eva_coco_det.pth"
