"""EVA-g Cascade Mask R-CNN, Objects365 intermediate fine-tuning, stage 1: 1024 px up to iteration 320k.

Batch 128, lr 1e-4 (layer decay 0.9, weight decay 0.1, drop path 0.6 from the common files and the preset),
380k iterations in all; stage 2 (``eva_g_o365_1280.py``) resumes this run at 1280 px. Initialise from the EVA
MIM checkpoint (``train.init_checkpoint=/path/eva_psz14.pt``): the backbone goes through the core converter.
"""

from .common.cascade_mask_rcnn import model
from .common.lsj_data import dataloader
from .common.optim import optimizer
from .common.schedule import lr_multiplier  # noqa: F401
from .common.train import train

dataloader.image_size = 1024
dataloader.datasets = [
    dict(
        name="objects365_v2_train",
        json_file="datasets/objects365/annotations/zhiyuan_objv2_train.json",
        image_root="datasets/objects365/train",
        fmt="coco",
    ),
    dict(
        name="objects365_v2_val",
        json_file="datasets/objects365/annotations/zhiyuan_objv2_val.json",
        image_root="datasets/objects365/val",
        fmt="coco",
    ),
]
dataloader.train.dataset.names = "objects365_v2_train"
dataloader.test.dataset.names = "objects365_v2_val"
dataloader.train.total_batch_size = 128

model.roi_heads.num_classes = 365
optimizer.lr = 1e-4
train.max_iter = 380000
train.stop_iter = 320000  # this stage ends here; the schedule spans max_iter
train.output_dir = "./output/eva_g_o365"
