"""EVA-02-L Cascade Mask R-CNN on LVIS v1 at 1024 px from the MIM encoder, as the authors'
``eva2_mim_to_lvis/eva2_lvis_cascade_mask_rcnn_vitdet_l_4attn_1024_lrd0p8.py`` (their ``eva02_L_lvis_bsl``:
55.3 box / 48.6 mask AP, docs/model_zoo_eva02.md).

The B recipe (``eva02_b_lvis_1024.py``) with ``eva02_large_det`` (global attention in blocks 5, 11, 17, 23, windows
of 16, drop path 0.4), layer decay 0.8 over the 24 blocks, 40k iterations with steps at 32k and 36k; batch 128 and
lr 1e-4 as B. Initialise from ``eva02_L_pt_in21k_p14to16.pt`` (the IN-21K encoder: the authors start every LVIS
model from it).
"""

from .eva02_b_lvis_1024 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.preset = "eva02_large_det"
optimizer.params.decay_rate = 0.8
train.max_iter = 40000
lr_multiplier.steps = [32000, 36000]  # the authors' max_iter * 8 // 10, max_iter * 9 // 10
train.output_dir = "./output/eva02_l_lvis_1024"
