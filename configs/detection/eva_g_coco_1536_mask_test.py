"""EVA-g COCO model evaluated at 1536 px for mask AP, as the authors' mask command line
(``cascade_mask_rcnn_vitdet_eva_1536.py`` with ``train.init_checkpoint=eva_coco_seg.pth`` and
``model.roi_heads.maskness_thresh=0.5``: 55.0 mask AP): the box protocol of ``eva_g_coco_1536_test.py`` plus
maskness rescoring (threshold 0.5)."""

from .eva_g_coco_1536_test import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.roi_heads.maskness_rescoring = True
model.roi_heads.maskness_threshold = 0.5
train.init_checkpoint = "./checkpoints/eva_coco_seg.pth"
