"""EVA-02-L Cascade Mask R-CNN on LVIS v1 at 1536 px from the MIM encoder, as the authors'
``eva2_mim_to_lvis/eva2_lvis_cascade_mask_rcnn_vitdet_l_8attn_win32_1536_lrd0p8.py`` (their ``eva02_L_lvis_sys``:
60.1 box / 53.5 mask AP, docs/model_zoo_eva02.md).

The L recipe at 1024 (``eva02_l_lvis_1024.py``: LVIS v1, batch 128, lr 1e-4, layer decay 0.8, 40k iterations with
steps at 32k and 36k, checkpoints and evaluation every 2500) with the backbone of ``eva02_l_coco_1536_win32.py``:
1536 px, windows of 32, global attention in 8 blocks (2, 5, ..., 23), activation checkpointing (drop path 0.4 as
at 1024). Test: the authors' README command, Soft-NMS per class and maskness (threshold 0.5) for both box and mask
AP, the config's score threshold 0.02 and the evaluator's 300 detections per image. Initialise from
``eva02_L_pt_in21k_p14to16.pt``.
"""

from .common.soft_nms import soft_nms as _soft_nms
from .eva02_l_lvis_1024 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.image_size = 1536
model.backbone.net.window_size = 32
model.backbone.net.global_block_indexes = (2, 5, 8, 11, 14, 17, 20, 23)
model.backbone.net.use_act_checkpoint = True
train.output_dir = "./output/eva02_l_lvis_1536_win32"

model.roi_heads.soft_nms = _soft_nms
model.roi_heads.maskness_rescoring = True
