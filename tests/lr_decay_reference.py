"""Layer-wise lr decay written from the EVA / BEiT rule, independent of ``eva_transfer.lr_decay``: patch and
position embeddings (and CLS / mask tokens) are layer 0, block ``i`` is layer ``i + 1``, everything else of the
backbone is layer ``depth + 1``; a parameter's lr scale is ``rate ** (depth + 1 - layer)``, and parameters outside
the backbone keep scale 1."""

from __future__ import annotations

import re

EMBEDDINGS = ("patch_embed.", "pos_embed", "cls_token", "mask_token")


def lr_scale_for_name(name: str, rate: float, depth: int, prefix: str = "") -> float:
    if not name.startswith(prefix):
        return 1.0
    name = name[len(prefix) :]
    block = re.match(r"blocks\.(\d+)\.", name)
    layer = 0 if name.startswith(EMBEDDINGS) else int(block.group(1)) + 1 if block else depth + 1
    return rate ** (depth + 1 - layer)
