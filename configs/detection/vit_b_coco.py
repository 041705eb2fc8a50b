"""ViT-B (EVA-B detection preset) Cascade Mask R-CNN on COCO at 1024 px: the COCO recipe on a smaller backbone.
Layer decay 0.7 and lr 1e-4 follow ViTDet's ViT-B setting (EVA did not publish these sizes)."""

from .eva_g_coco_1280 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.preset = "eva_b_det"
dataloader.image_size = 1024
optimizer.params.decay_rate = 0.7
optimizer.lr = 1e-4
train.init_checkpoint = ""  # a ViT-B MIM / timm backbone or a ViT-B detector checkpoint
train.output_dir = "./output/vit_b_coco"
