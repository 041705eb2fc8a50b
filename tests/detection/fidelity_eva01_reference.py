"""A small, independent model of the EVA-01 detection backbone as the authors' code computes it.

Written from the equations of baaivision/EVA ``EVA-01/det`` (``detectron2/modeling/backbone/vit.py`` and
``utils.py``) and their 14->16 conversion script; it imports nothing from ``eva_transfer`` or ``projects`` (a test
checks that), so that the toolkit's backbone can be held against it. Plain loops, float64, no fused kernels.

State dicts are in the authors' layout (backbone-relative keys): ``patch_embed.proj.{weight,bias}``,
``pos_embed`` ``(1, 1 + G*G, C)``, ``blocks.{i}.norm1/norm2.{weight,bias}``, ``blocks.{i}.attn.qkv.weight``
(no bias), ``blocks.{i}.attn.{q_bias,v_bias}``, ``blocks.{i}.attn.rel_pos_{h,w}``, ``blocks.{i}.attn.proj.*``,
``blocks.{i}.mlp.fc{1,2}.*``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import interpolate

BEIT_Q = 1.0903078


# --------------------------------------------------------------------------- the authors' offline conversion
def mim_to_detection(mim: dict, new_patch: int = 16, pos_side: int = 14) -> dict:
    """``eva_psz14.pt`` -> the ``eva_psz14to16.pt`` layout: patch kernel bicubic to 16x16, the position table's
    16x16 grid bicubic to 14x14 (CLS slot kept), pre-training-only keys left out."""
    out = {}
    for k, v in mim.items():
        if k in ("mask_token", "cls_token") or k.startswith(("lm_head", "norm.")):
            continue
        if k == "patch_embed.proj.weight":
            v = F.interpolate(v.float(), size=(new_patch, new_patch), mode="bicubic", align_corners=False)
        elif k == "pos_embed":
            side = int(math.isqrt(v.shape[1] - 1))
            grid = v[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(pos_side, pos_side), mode="bicubic", align_corners=False)
            v = torch.cat([v[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------ run-time equations
def abs_pos(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``get_abs_pos``: drop the CLS slot, bicubic (corners not aligned) from the square grid to ``(h, w)``."""
    table = pos_embed[:, 1:]
    side = int(math.isqrt(table.shape[1]))
    assert side * side == table.shape[1]
    grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if (side, side) != (h, w):
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1)  # (1, h, w, C)


def resize_rel(rel: torch.Tensor, length: int, interp_type: str) -> torch.Tensor:
    """``get_rel_pos``'s table resize: "vitdet" linear, "beit" cubic (scipy interp1d) over geometric offsets."""
    if rel.shape[0] == length:
        return rel
    if interp_type == "vitdet":
        return F.interpolate(rel.t()[None], size=length, mode="linear")[0].t()
    assert interp_type == "beit"
    src = rel.shape[0]
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += BEIT_Q ** (i + 1)
    x = [-d for d in reversed(dis)] + [0.0] + dis
    t = length // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    cols = []
    for c in range(rel.shape[1]):
        z = rel[:, c].float().numpy()
        f = interpolate.interp1d(x, z, kind="cubic", fill_value="extrapolate")
        cols.append(torch.Tensor(f(dx)).view(-1, 1))
    return torch.cat(cols, dim=-1).to(rel.dtype)


def rel_table(size: int, rel: torch.Tensor, interp_type: str) -> torch.Tensor:
    """``(size, size, C)``: entry ``[i, j]`` is the table row for offset ``i - j``."""
    rel = resize_rel(rel, 2 * size - 1, interp_type)
    idx = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return rel[idx]


def attention(p: dict, x: torch.Tensor, heads: int, interp_type: str, chunk: int = 2048) -> torch.Tensor:
    """One attention on ``(B, H, W, C)``: qkv with bias (q_bias, 0, v_bias), softmax(q k^T * scale + rel),
    rel = q . R_h[h_q - h_k] + q . R_w[w_q - w_k] with the unscaled query."""
    b, h, w, c = x.shape
    d = c // heads
    bias = torch.cat([p["q_bias"], torch.zeros_like(p["q_bias"]), p["v_bias"]])
    qkv = (x.reshape(b, h * w, c) @ p["qkv.weight"].t() + bias).reshape(b, h * w, 3, heads, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
    rh = rel_table(h, p["rel_pos_h"], interp_type)  # (h, h, d)
    rw = rel_table(w, p["rel_pos_w"], interp_type)
    out = torch.empty_like(q)
    n = h * w
    rows = torch.arange(n)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        qs = q[:, :, s:e]  # (B, heads, m, d)
        logits = (qs * d**-0.5) @ k.transpose(-1, -2)  # (B, heads, m, N)
        hq, wq = rows[s:e] // w, rows[s:e] % w
        rel_h = torch.einsum("bnmc,mkc->bnmk", qs, rh[hq])  # (B, heads, m, h)
        rel_w = torch.einsum("bnmc,mkc->bnmk", qs, rw[wq])  # (B, heads, m, w)
        logits = (logits.view(b, heads, e - s, h, w) + rel_h[..., :, None] + rel_w[..., None, :]).view(
            b, heads, e - s, n
        )
        out[:, :, s:e] = logits.softmax(-1) @ v
    out = out.permute(0, 2, 1, 3).reshape(b, h, w, c)
    return out @ p["proj.weight"].t() + p["proj.bias"]


def _layer_norm(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-6)


def block(p: dict, x: torch.Tensor, heads: int, window: int, interp_type: str) -> torch.Tensor:
    """Pre-norm block; a window block pads the normed map with zeros to a multiple of the window, attends in
    each window, and crops."""
    shortcut = x
    x = _layer_norm(x, p, "norm1")
    attn_p = {k[len("attn.") :]: v for k, v in p.items() if k.startswith("attn.")}
    if window > 0:
        b, h, w, c = x.shape
        ph, pw = (window - h % window) % window, (window - w % window) % window
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, window, window, c)
        x = attention(attn_p, x, heads, interp_type)
        x = x.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, hp, wp, c)[:, :h, :w]
    else:
        x = attention(attn_p, x, heads, interp_type)
    x = shortcut + x
    y = _layer_norm(x, p, "norm2")
    y = F.gelu(y @ p["mlp.fc1.weight"].t() + p["mlp.fc1.bias"]) @ p["mlp.fc2.weight"].t() + p["mlp.fc2.bias"]
    return x + y


def vit_forward(
    sd: dict,
    image: torch.Tensor,
    *,
    num_heads: int,
    window_size: int,
    window_block_indexes,
    patch_size: int = 16,
    interp_type: str = "vitdet",
) -> torch.Tensor:
    """The authors' ``ViT.forward``: ``(B, 3, H, W)`` -> ``(B, C, H/16, W/16)`` (float64)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = F.conv2d(
        image.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch_size
    )
    x = x.permute(0, 2, 3, 1)
    x = x + abs_pos(sd["pos_embed"], x.shape[1], x.shape[2])
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = {k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        x = block(p, x, num_heads, window_size if i in window_block_indexes else 0, interp_type)
    return x.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------- random checkpoints
def random_backbone(
    dim: int, depth: int, heads: int, mlp: int, *, train_img: int, window: int, global_blocks, seed: int = 0
) -> dict:
    """A random detector backbone in the authors' layout: 14x14 + CLS position table, relative tables sized
    for the training grid (global blocks) or the window."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    d = dim // heads
    sd = {
        "patch_embed.proj.weight": rnd(dim, 3, 16, 16),
        "patch_embed.proj.bias": rnd(dim),
        "pos_embed": rnd(1, 1 + 14 * 14, dim, std=0.5),
    }
    grid = train_img // 16
    for i in range(depth):
        side = grid if i in global_blocks else window
        p = f"blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + rnd(dim, std=0.1),
                p + "norm1.bias": rnd(dim),
                p + "attn.qkv.weight": rnd(3 * dim, dim, std=0.2),
                p + "attn.q_bias": rnd(dim, std=0.1),
                p + "attn.v_bias": rnd(dim, std=0.1),
                p + "attn.rel_pos_h": rnd(2 * side - 1, d, std=0.5),
                p + "attn.rel_pos_w": rnd(2 * side - 1, d, std=0.5),
                p + "attn.proj.weight": rnd(dim, dim, std=0.1),
                p + "attn.proj.bias": rnd(dim),
                p + "norm2.weight": 1 + rnd(dim, std=0.1),
                p + "norm2.bias": rnd(dim),
                p + "mlp.fc1.weight": rnd(mlp, dim, std=0.1),
                p + "mlp.fc1.bias": rnd(mlp),
                p + "mlp.fc2.weight": rnd(dim, mlp, std=0.1),
                p + "mlp.fc2.bias": rnd(dim),
            }
        )
    return sd


def random_mim(dim: int, depth: int, heads: int, mlp: int, seed: int = 0) -> dict:
    """A random EVA MIM checkpoint body (``eva_psz14.pt`` layout): patch 14, 16x16 + CLS table, CLS and mask
    tokens, final norm, ``lm_head``; no relative position."""
    g = torch.Generator().manual_seed(seed)
    sd = random_backbone(
        dim, depth, heads, mlp, train_img=224, window=0, global_blocks=range(depth), seed=seed
    )
    sd = {k: v for k, v in sd.items() if "rel_pos" not in k}
    sd["patch_embed.proj.weight"] = torch.randn(dim, 3, 14, 14, generator=g) * 0.02
    sd["pos_embed"] = torch.randn(1, 1 + 16 * 16, dim, generator=g) * 0.5
    sd["cls_token"] = torch.randn(1, 1, dim, generator=g) * 0.02
    sd["mask_token"] = torch.randn(1, 1, dim, generator=g) * 0.02
    sd["norm.weight"], sd["norm.bias"] = torch.ones(dim), torch.zeros(dim)
    sd["lm_head.weight"], sd["lm_head.bias"] = torch.randn(32, dim, generator=g) * 0.02, torch.zeros(32)
    return sd
