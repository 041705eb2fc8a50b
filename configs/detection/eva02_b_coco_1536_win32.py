"""EVA-02-B Cascade Mask R-CNN on COCO at 1536 px from the MIM encoder, as the authors'
``eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_b_6attn_win32_1536_lrd0p7.py`` (their ``eva02_B_coco_sys``:
58.9 box / 50.7 mask AP, docs/model_zoo_eva02.md).

The COCO 1024 recipe (``eva02_b_coco_1024.py``: batch 128, lr 5e-5, layer decay 0.7, 60k iterations) at 1536 px with
windows of 32 and global attention in 6 blocks (1, 3, 5, 7, 9, 11). The rotary positions follow the window: the
32x32 window grid (the 96x96 image grid in the global blocks) rescaled to the 16x16 pre-training grid.
Test: the authors' README commands, Soft-NMS (linear, IoU 0.6) per class with score threshold 0.0, no maskness
(box AP); ``model.roi_heads.maskness_rescoring=True`` is their mask-AP command (``maskness_thresh=0.5``).
Initialise from ``eva02_B_pt_in21k_p14to16.pt``.
"""

from .common.soft_nms import soft_nms as _soft_nms
from .eva02_b_coco_1024 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.image_size = 1536
model.backbone.net.window_size = 32
model.backbone.net.global_block_indexes = (1, 3, 5, 7, 9, 11)
train.output_dir = "./output/eva02_b_coco_1536_win32"

model.roi_heads.soft_nms = _soft_nms
model.roi_heads.override_score_thresh = 0.0
