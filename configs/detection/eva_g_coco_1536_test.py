"""EVA-g COCO model evaluated at 1536 px (``--eval-only train.init_checkpoint=...``)."""

from .eva_g_coco_1280 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.image_size = 1536
model.backbone.net.img_size = 1536
