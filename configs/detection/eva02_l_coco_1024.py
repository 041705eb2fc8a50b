"""EVA-02-L Cascade Mask R-CNN on COCO at 1024 px from the MIM encoder, as the authors'
``eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet_l_4attn_1024_lrd0p8.py`` (their ``eva02_L_coco_bsl``:
59.2 box / 50.8 mask AP, docs/model_zoo_eva02.md).

The base recipe (``eva02_b_coco_1024.py``) with ``eva02_large_det`` (global attention in blocks 5, 11, 17, 23,
windows of 16, drop path 0.4), batch 144, lr 6e-5 with layer decay 0.8 over the 24 blocks. Initialise from
``eva02_L_pt_m38m_p14to16.pt``.
"""

from .eva02_b_coco_1024 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.train.total_batch_size = 144
model.backbone.net.preset = "eva02_large_det"
optimizer.lr = 6e-5
optimizer.params.decay_rate = 0.8
train.output_dir = "./output/eva02_l_coco_1024"
