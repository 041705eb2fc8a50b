"""EVA-02-L Cascade Mask R-CNN on COCO at 1536 px from the Objects365 model, as the authors'
``eva2_o365_to_coco/eva2_o365_to_coco_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py`` (their
``eva02_L_coco_det_sys_o365``: 64.1 box AP, ``eva02_L_coco_seg_sys_o365``: 55.4 mask AP; docs/model_zoo_eva02.md).

Backbone ``eva02_large_det`` with 8 global blocks (2, 5, ..., 23), windows of 16, drop path 0.3, activation
checkpointing. Batch 64, AdamW lr 4e-5 with layer decay 0.8 over the 24 blocks, weight decay on every parameter,
40k iterations at a constant lr after 400 warm-up iterations (the authors' cosine from 1 to 1 with 1% warm-up), AMP.
The authors also keep an EMA of the weights (decay 0.9999) and evaluate it; this project's trainer has no EMA.

Test: the authors' README command, Soft-NMS (linear, IoU 0.6) per class with score threshold 0.0, no maskness
(box AP); ``model.roi_heads.maskness_rescoring=True`` is their mask-AP command (``maskness_thresh=0.5``).
``train.init_checkpoint`` is the Objects365 model (``eva02_L_m38m_to_o365.pth``).
"""

from .common.cascade_mask_rcnn import model
from .common.lsj_data import dataloader
from .common.optim import optimizer
from .common.schedule import lr_multiplier
from .common.soft_nms import soft_nms as _soft_nms
from .common.train import train

dataloader.image_size = 1536
dataloader.train.dataset.names = "coco_2017_train"
dataloader.test.dataset.names = "coco_2017_val"
dataloader.train.total_batch_size = 64

model.backbone.net.preset = "eva02_large_det"
model.backbone.net.global_block_indexes = (2, 5, 8, 11, 14, 17, 20, 23)
model.backbone.net.drop_path_rate = 0.3
model.backbone.net.use_act_checkpoint = True
model.backbone.freeze_patch_embed = False

optimizer.lr = 4e-5
optimizer.params.decay_rate = 0.8
train.max_iter = 40000
lr_multiplier.steps = []  # constant lr after the warm-up
lr_multiplier.warmup_iters = 400  # warmup_length 0.01 of 40000
train.ddp.fp16_compression = True
train.output_dir = "./output/eva02_l_coco_1536"

model.roi_heads.soft_nms = _soft_nms
model.roi_heads.override_score_thresh = 0.0
model.roi_heads.topk_after_soft_nms = False
model.roi_heads.maskness_rescoring = False
