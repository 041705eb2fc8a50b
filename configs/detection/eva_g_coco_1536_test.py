"""EVA-g COCO model evaluated at 1536 px (``--eval-only train.init_checkpoint=...``), as the authors'
``COCO/cascade_mask_rcnn_vitdet_eva_1536.py``: the 1280-trained model, its global blocks' relative-position
tables resized 159 -> 191 with the authors' "beit" rule (cubic over geometric offsets, ratio 1.0903078) when the
checkpoint loads; every test image is padded to 1536 x 1536, so the grid is always 96 x 96."""

from .eva_g_coco_1280 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.image_size = 1536
model.backbone.net.img_size = 1536
train.checkpoint_load.rel_pos_resize = "beit"
