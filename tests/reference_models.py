"""Independent reference models at the tiny presets' shape, and random weights for comparing two models.

The references are the libraries' own classes (timm's ``Eva``, Detectron2's ViTDet ``ViT``) built with the shape of
``eva_tiny`` / ``eva_tiny_det`` (width 64, 4 blocks, 4 heads, MLP ratio 2); arguments override it.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import nn

#: the width, depth, heads and MLP ratio of the ``eva_tiny*`` presets
TINY_SHAPE = dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)

#: ``eva_tiny_det`` in Detectron2's ViT arguments: windows of 4 in blocks 0 and 2, global blocks 1 and 3, decomposed
#: relative position, the 4x4 pre-training grid (64 px at patch 16)
TINY_DET_LAYOUT = dict(
    img_size=128,
    patch_size=16,
    use_rel_pos=True,
    window_size=4,
    window_block_indexes=(0, 2),
    pretrain_img_size=64,
)


def randomize(
    module: nn.Module, seed: int = 0, scale: float = 0.1, dtype: Optional[torch.dtype] = torch.float32
) -> nn.Module:
    """Every parameter drawn from N(0, scale^2) by a generator seeded with ``seed`` (in ``dtype``, or each
    parameter's own dtype when None), so that biases, norms and tables, which start at zero or one, take part in
    a comparison. Returns the module."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype or p.dtype).to(p.dtype) * scale)
    return module


def tiny_timm_eva(**kwargs) -> nn.Module:
    """timm's ``Eva`` at the tiny shape, without a head and with the final norm in ``forward_features``."""
    from timm.models.eva import Eva

    return Eva(**{**TINY_SHAPE, "num_classes": 0, "use_fc_norm": False, **kwargs}).eval()


def tiny_detectron2_vit(**kwargs) -> nn.Module:
    """Detectron2's ViTDet ``ViT`` at the tiny shape with q/k/v biases and LayerNorm eps 1e-6 (ViTDet's configs'
    and this toolkit's; Detectron2's class default is PyTorch's 1e-5)."""
    from eva_transfer_projects import compat

    compat.apply_detectron2()
    from detectron2.modeling import ViT

    args = {**TINY_SHAPE, "qkv_bias": True, "norm_layer": partial(nn.LayerNorm, eps=1e-6), **kwargs}
    return ViT(**args).eval()


def eva02_det_rope(head_dim, n_h, n_w, pt=16):
    """The EVA-02 detection backbone's rotary table (``VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len,
    ft_seq_len)``; float32 like theirs), for an ``n_h x n_w`` grid: positions ``arange(n) / n * pt`` per axis, row
    angles in the first half of the head, column angles in the second, each frequency repeated for a pair."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t_h, t_w = torch.arange(n_h) / n_h * pt, torch.arange(n_w) / n_w * pt
    f_h = torch.einsum("i,f->if", t_h, freqs).repeat_interleave(2, -1)
    f_w = torch.einsum("i,f->if", t_w, freqs).repeat_interleave(2, -1)
    f = torch.cat([f_h[:, None].expand(n_h, n_w, dim), f_w[None, :].expand(n_h, n_w, dim)], dim=-1)
    f = f.reshape(n_h * n_w, head_dim)
    return f.cos(), f.sin()
