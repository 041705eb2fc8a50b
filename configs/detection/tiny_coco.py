"""Tiny COCO-recipe detector on synthetic COCO-format shapes: trains on a CPU in minutes.

The synthetic data (6 classes, 2-5 objects of several sizes per 128 px image) is written under
``dataloader.synthetic_root`` on first use.
"""

from .common.soft_nms import soft_nms as _soft_nms
from .common.tiny import shrink_to_tiny
from .eva_g_coco_1280 import dataloader, lr_multiplier, model, optimizer, train

shrink_to_tiny(model, dataloader, optimizer, train)
dataloader.datasets = [
    dict(
        name="synthetic_coco_train",
        fmt="coco",
        synthetic=dict(root="${dataloader.synthetic_root}/coco", split="train", num_images=600, seed=0),
    ),
    dict(
        name="synthetic_coco_val",
        fmt="coco",
        synthetic=dict(root="${dataloader.synthetic_root}/coco", split="val", num_images=60, seed=1),
    ),
]
dataloader.train.dataset.names = "synthetic_coco_train"
dataloader.test.dataset.names = "synthetic_coco_val"
model.roi_heads.num_classes = 6
# test: Soft-NMS cut to 100 per image and maskness (the CPU tests' fixed protocol)
model.roi_heads.soft_nms = _soft_nms
model.roi_heads.topk_after_soft_nms = True
model.roi_heads.maskness_rescoring = True
train.max_iter = 350
lr_multiplier.steps = [300]
lr_multiplier.warmup_iters = 50
train.output_dir = "./output/tiny_coco"
