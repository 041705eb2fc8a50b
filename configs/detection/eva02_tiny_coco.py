"""Tiny COCO-recipe detector with EVA-02's detection block (``eva02_tiny_det``: SwiGLU with sub-LN, RoPE, windows
with global blocks, no relative position) on the synthetic shapes of ``tiny_coco.py``: runs on a CPU."""

from .tiny_coco import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.preset = "eva02_tiny_det"
train.output_dir = "./output/eva02_tiny_coco"
