"""EVA-02-B Cascade Mask R-CNN on COCO at 1024 px from the MIM encoder, as the authors'
``eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py`` (their ``eva02_B_coco_bsl``:
55.5 box / 47.1 mask AP, docs/model_zoo_eva02.md).

Backbone ``eva02_base_det`` (global attention in blocks 2, 5, 8, 11, windows of 16, drop path 0.1). Batch 128,
AdamW lr 5e-5 with layer decay 0.7 over the 12 blocks, weight decay on every parameter, 60k iterations with steps
at 48k and 54k, 1000 warm-up iterations, AMP. The patch embedding trains (EVA-02's backbone freezes nothing).
Test: the authors' defaults (hard NMS 0.5, score 0.05, 100 per image, no maskness). Initialise from the MIM
encoder (``train.init_checkpoint=/path/eva02_B_pt_in21k_p14to16.pt``).
"""

from .common.cascade_mask_rcnn import model
from .common.lsj_data import dataloader
from .common.optim import optimizer
from .common.schedule import lr_multiplier
from .common.train import train

dataloader.image_size = 1024
dataloader.train.dataset.names = "coco_2017_train"
dataloader.test.dataset.names = "coco_2017_val"
dataloader.train.total_batch_size = 128

model.backbone.net.preset = "eva02_base_det"
model.backbone.net.use_act_checkpoint = False
model.backbone.freeze_patch_embed = False

optimizer.lr = 5e-5
optimizer.params.decay_rate = 0.7
train.max_iter = 60000
lr_multiplier.steps = [48000, 54000]  # the authors' max_iter * 8 // 10, max_iter * 9 // 10
lr_multiplier.warmup_iters = 1000
train.ddp.fp16_compression = True
train.output_dir = "./output/eva02_b_coco_1024"
