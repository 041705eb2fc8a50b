"""AdamW (0.9, 0.999), weight decay 0.1 on every parameter (the EVA-01 detection configs reset Detectron2's
``weight_decay_norm`` and ``overrides``), layer-wise lr decay 0.9; ``params.model`` is set to the model by
tools/train_net.py. ``optimizer.params.weight_decay_scope="standard"`` exempts norms, biases, embeddings and
relative-position tables instead."""

import torch
from detectron2.config import LazyCall as L

from eva_transfer.lr_decay import param_groups_layer_decay

optimizer = L(torch.optim.AdamW)(
    params=L(param_groups_layer_decay)(
        base_lr="${..lr}", weight_decay="${..weight_decay}", decay_rate=0.9, weight_decay_scope="all"
    ),
    lr="???",  # set by each recipe
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
