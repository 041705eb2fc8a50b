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


def _rotate_pairs(t):
    pairs = t.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def _eva02_attention(x, sd, pre, heads, rope):
    """``x``: (B, N, C) tokens of one grid; EVA-02's attention (separate q/k/v projections, no key bias, rotary
    position on q and k)."""
    import torch.nn.functional as F

    b, n, c = x.shape
    split = lambda t: t.view(b, n, heads, -1).transpose(1, 2)  # noqa: E731
    q = split(F.linear(x, sd[pre + "q_proj.weight"], sd[pre + "q_bias"]))
    k = split(F.linear(x, sd[pre + "k_proj.weight"]))
    v = split(F.linear(x, sd[pre + "v_proj.weight"], sd[pre + "v_bias"]))
    cos, sin = (r.to(x.dtype) for r in rope)
    q = q * cos + _rotate_pairs(q) * sin
    k = k * cos + _rotate_pairs(k) * sin
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, sd[pre + "proj.weight"], sd[pre + "proj.bias"])


def eva02_det_vit_forward(sd, x, *, num_heads, window_size, global_blocks, window_rope="window"):
    """The EVA-02 detection backbone (EVA-02/det/detectron2/modeling/backbone/vit.py) in float64 on a state dict
    in its layout: patch embedding, the CLS-less position grid resized bicubically to the patch grid (their
    ``get_abs_pos``; skipped without ``pos_embed``), blocks with windows zero-padded after the first norm and the
    rotary table of the window grid (global blocks: of the patch grid), SwiGLU with sub-LN. (B, C, H/16, W/16).
    ``window_rope="image"`` is the rule it does not follow (the patch grid's table cut into windows), for negative
    checks."""
    import torch.nn.functional as F

    sd = {k: v.double() for k, v in sd.items() if v.is_floating_point()}
    patch = sd["patch_embed.proj.weight"].shape[-1]
    ln = lambda t, p: F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-6)  # noqa: E731
    feat = F.conv2d(x.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    h, w = feat.shape[-2:]
    if "pos_embed" in sd:
        table = sd["pos_embed"][:, 1:]
        side = int(table.shape[1] ** 0.5)
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        feat = feat + F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    t = feat.permute(0, 2, 3, 1)  # (B, H, W, C)
    b, c = t.shape[0], t.shape[-1]
    ws, head_dim = window_size, c // num_heads
    grid_rope = eva02_det_rope(head_dim, h, w)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        pre = f"blocks.{i}."
        y = ln(t, pre + "norm1")
        if i in global_blocks:
            y = _eva02_attention(y.reshape(b, h * w, c), sd, pre + "attn.", num_heads, grid_rope).view(
                b, h, w, c
            )
        else:
            hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
            padded = y.new_zeros(b, hp, wp, c)
            padded[:, :h, :w] = y
            out = torch.empty_like(padded)
            image_rope = [r.view(h, w, -1) for r in grid_rope]
            for r in range(0, hp, ws):
                for s in range(0, wp, ws):
                    if window_rope == "window":
                        rope = eva02_det_rope(head_dim, ws, ws)
                    else:  # the image table at the window's cells (padded cells: the table's last row/column)
                        rows = torch.arange(r, r + ws).clamp(max=h - 1)
                        cols = torch.arange(s, s + ws).clamp(max=w - 1)
                        rope = [e[rows][:, cols].reshape(ws * ws, -1) for e in image_rope]
                    win = padded[:, r : r + ws, s : s + ws].reshape(b, ws * ws, c)
                    attn = _eva02_attention(win, sd, pre + "attn.", num_heads, rope)
                    out[:, r : r + ws, s : s + ws] = attn.view(b, ws, ws, c)
            y = out[:, :h, :w]
        t = t + y
        z = ln(t, pre + "norm2")
        hidden = F.silu(F.linear(z, sd[pre + "mlp.w1.weight"], sd[pre + "mlp.w1.bias"]))
        hidden = hidden * F.linear(z, sd[pre + "mlp.w2.weight"], sd[pre + "mlp.w2.bias"])
        t = t + F.linear(ln(hidden, pre + "mlp.ffn_ln"), sd[pre + "mlp.w3.weight"], sd[pre + "mlp.w3.bias"])
    return t.permute(0, 3, 1, 2)
