"""EVA-g Cascade Mask R-CNN on COCO at 1280 px, from the Objects365 model (paper: 64.2 box / 55.0 mask AP).

Batch 64, AdamW lr 2.5e-5, 45k iterations with a step at 40k, AMP. Test: Soft-NMS (linear, IoU 0.6) and
maskness rescoring. ``train.init_checkpoint`` is the Objects365 model: classes whose names match keep their
Objects365 rows (see projects/detection/class_transfer.py).
"""

from .common.cascade_mask_rcnn import model
from .common.lsj_data import dataloader
from .common.optim import optimizer
from .common.schedule import lr_multiplier
from .common.train import train

dataloader.train.dataset.names = "coco_2017_train"
dataloader.test.dataset.names = "coco_2017_val"
dataloader.train.total_batch_size = 64

optimizer.lr = 2.5e-5
train.max_iter = 45000
lr_multiplier.steps = [40000]
train.init_checkpoint = "./output/eva_g_o365/model_final.pth"
train.output_dir = "./output/eva_g_coco_1280"

model.roi_heads.soft_nms = dict(method="linear", iou_threshold=0.6, sigma=0.5, score_floor=1e-3)
model.roi_heads.maskness_rescoring = True
