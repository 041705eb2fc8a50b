"""EVA-02-B Cascade Mask R-CNN on LVIS v1 at 1024 px from the MIM encoder, as the authors'
``eva2_mim_to_lvis/eva2_lvis_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py`` (their ``eva02_B_lvis_bsl``:
47.1 box / 41.4 mask AP, docs/model_zoo_eva02.md).

The COCO 1024 recipe (``eva02_b_coco_1024.py``) on LVIS v1 (``common/lvis.py``: 1203 classes, sigmoid cross-entropy
with federated loss, repeat-factor sampling, up to 300 detections per image above score 0.02), lr 1e-4, 50k
iterations with steps at 40k and 45k, checkpoints and evaluation every 2500 iterations. Test: the config as is (the
authors' README command passes no override: hard NMS, no maskness; the evaluator keeps 300 detections per image).
Initialise from ``eva02_B_pt_in21k_p14to16.pt``.
"""

from .common.lvis import lvis_v1 as _lvis_v1
from .eva02_b_coco_1024 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

_lvis_v1(dataloader, model)

optimizer.lr = 1e-4
train.max_iter = 50000
lr_multiplier.steps = [40000, 45000]  # the authors' max_iter * 8 // 10, max_iter * 9 // 10
train.eval_period = 2500
train.checkpointer.period = 2500
train.output_dir = "./output/eva02_b_lvis_1024"
