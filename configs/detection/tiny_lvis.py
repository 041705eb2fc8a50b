"""Tiny LVIS-recipe detector (federated loss, repeat-factor sampling) on synthetic LVIS-format shapes with
frequent / common / rare classes."""

from .common.tiny import shrink_to_tiny
from .eva_g_lvis_1280 import dataloader, lr_multiplier, model, optimizer, train

shrink_to_tiny(model, dataloader, optimizer, train)
dataloader.datasets = [
    dict(
        name="synthetic_lvis_train",
        fmt="lvis",
        synthetic=dict(
            root="${dataloader.synthetic_root}/lvis", split="train", num_images=600, seed=0, num_classes=12
        ),
    ),
    dict(
        name="synthetic_lvis_val",
        fmt="lvis",
        synthetic=dict(
            root="${dataloader.synthetic_root}/lvis", split="val", num_images=60, seed=1, num_classes=12
        ),
    ),
]
dataloader.train.dataset.names = "synthetic_lvis_train"
dataloader.test.dataset.names = "synthetic_lvis_val"
model.roi_heads.num_classes = 12
model.roi_heads.maskness_rescoring = True  # the CPU tests' fixed protocol
for _predictor in model.roi_heads.box_predictors:
    _predictor.fed_loss_num_classes = 6  # of 12 classes, as LVIS's 50 of 1203 keeps a sampled subset
train.max_iter = 350
lr_multiplier.steps = [300]
lr_multiplier.warmup_iters = 50
train.output_dir = "./output/tiny_lvis"
