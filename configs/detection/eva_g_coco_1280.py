"""EVA-g Cascade Mask R-CNN on COCO at 1280 px, from the Objects365 model, as the authors'
``COCO/cascade_mask_rcnn_vitdet_eva.py``.

Batch 64, AdamW lr 2.5e-5, 45k iterations with a step at 40k, AMP. The authors' published COCO numbers are
evaluated at 1536 (``eva_g_coco_1536_test.py``, ``eva_g_coco_1536_mask_test.py``): 64.2 box AP from their
checkpoint at 35k iterations (``eva_coco_det.pth``), 55.0 mask AP from the one at 45k (``eva_coco_seg.pth``).
This training config's own evaluation is the authors' default (hard NMS 0.5, score 0.05, 100 per image).
``train.init_checkpoint`` is the Objects365 model: classes whose names match keep their Objects365 rows (see
projects/detection/class_transfer.py).
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
lr_multiplier.steps = [40000, 44999]  # the authors' milestones: x0.1 at 40k, x0.01 for the last iteration
train.init_checkpoint = "./output/eva_g_o365/model_final.pth"
train.output_dir = "./output/eva_g_coco_1280"

# test: the authors' training config evaluates with hard NMS (0.5), score 0.05, 100 per image, no maskness
model.roi_heads.soft_nms = None
model.roi_heads.maskness_rescoring = False
