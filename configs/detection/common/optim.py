"""AdamW (0.9, 0.999), weight decay 0.1, layer-wise lr decay 0.9 (EVA detection); ``params.model`` is set to
the model by tools/train_net.py."""

import torch
from detectron2.config import LazyCall as L

from eva_transfer.lr_decay import param_groups_layer_decay

optimizer = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(base_lr="${..lr}", weight_decay="${..weight_decay}", decay_rate=0.9),
    lr="???",  # set by each recipe
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
