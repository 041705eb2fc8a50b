"""ViT-L (EVA-L detection preset) Cascade Mask R-CNN on COCO at 1024 px. Layer decay 0.8 follows ViTDet's
ViT-L setting (EVA did not publish these sizes)."""

from .vit_b_coco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.preset = "eva_l_det"
optimizer.params.decay_rate = 0.8
train.output_dir = "./output/vit_l_coco"
