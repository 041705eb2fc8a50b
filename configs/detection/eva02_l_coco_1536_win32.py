"""EVA-02-L Cascade Mask R-CNN on COCO at 1536 px from the MIM encoder, as the authors'
``eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_l_8attn_win32_1536_lrd0p8.py`` (their ``eva02_L_coco_sys``:
62.3 box / 53.8 mask AP, docs/model_zoo_eva02.md).

The B recipe (``eva02_b_coco_1536_win32.py``: 1536 px, windows of 32, batch 128, lr 5e-5, 60k iterations, the
README's Soft-NMS test) with ``eva02_large_det`` (drop path 0.4), global attention in 8 blocks (2, 5, ..., 23),
activation checkpointing and layer decay 0.8 over the 24 blocks. Initialise from ``eva02_L_pt_m38m_p14to16.pt``.
"""

from .eva02_b_coco_1536_win32 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.preset = "eva02_large_det"
model.backbone.net.global_block_indexes = (2, 5, 8, 11, 14, 17, 20, 23)
model.backbone.net.use_act_checkpoint = True
optimizer.params.decay_rate = 0.8
train.output_dir = "./output/eva02_l_coco_1536_win32"
