"""EVA-g Objects365 stage 2: resume stage 1's output (``--resume``) at 1280 px up to iteration 380k."""

from .eva_g_o365_1024 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.image_size = 1280
train.stop_iter = None
