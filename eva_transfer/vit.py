"""The EVA vision transformer: one class for pre-training, detection and segmentation.

Tokens flow through the blocks as ``(B, N, C)`` sequences together with their patch grid ``(H, W)``, so the
same blocks serve a CLS-token model (pre-training, classification-style features) and a windowed,
relative-position model (detection). Window attention pads the grid to a multiple of the window and crops
afterwards. Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on GPU);
decomposed relative position enters it as an additive bias built from two small tensors, in query chunks on large
grids (see :func:`attention_with_rel_pos`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath
from torch import Tensor, nn

from .attention import rel_pos_attention, use_recompute_attention

__all__ = [
    "EVAViT",
    "Attention",
    "Block",
    "attention_with_rel_pos",
    "get_rel_pos",
    "interpolate_abs_pos",
    "window_partition",
    "window_unpartition",
]


def interpolate_abs_pos(
    pos_embed: Tensor, has_cls_slot: bool, hw: tuple[int, int], grid: Optional[tuple[int, int]] = None
) -> Tensor:
    """Absolute position embeddings resized to a patch grid.

    Args:
        pos_embed: ``(1, [1+]Gh*Gw, C)`` table, with a leading CLS slot if ``has_cls_slot``.
        hw: target grid ``(H, W)``.
        grid: the table's grid ``(Gh, Gw)``; square if omitted.
    Returns:
        ``(1, H*W, C)`` patch position embeddings (the CLS slot is not included). Bicubic, corners not aligned
        (the ViTDet convention).
    """
    if has_cls_slot:
        pos_embed = pos_embed[:, 1:]
    n = pos_embed.shape[1]
    if grid is None:
        g = int(round(math.sqrt(n)))
        grid = (g, g)
    if grid[0] * grid[1] != n:
        raise ValueError(f"absolute position table has {n} patch slots, not a {grid[0]}x{grid[1]} grid")
    if tuple(grid) == tuple(hw):
        return pos_embed
    table = pos_embed.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    table = F.interpolate(table.float(), size=hw, mode="bicubic", align_corners=False).to(pos_embed.dtype)
    return table.permute(0, 2, 3, 1).reshape(1, hw[0] * hw[1], -1)


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    Args:
        rel_pos: ``(L, C)`` table; resized linearly if ``L != 2 * max(q_size, k_size) - 1``.
    Returns:
        ``(q_size, k_size, C)``.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        table = F.interpolate(rel_pos.t()[None].float(), size=max_rel_dist, mode="linear")
        rel_pos = table[0].t().to(rel_pos.dtype)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


#: attention logits materialised at once (per call) before the queries are processed in chunks
MAX_BIAS_ELEMENTS = 1 << 25


def attention_with_rel_pos(
    q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int], rel_pos_h: Tensor, rel_pos_w: Tensor, scale: float
) -> Tensor:
    """Softmax attention with decomposed relative position (ViTDet/MViTv2 layout).

    The bias ``q_i . R_h[h_i - h_j] + q_i . R_w[w_i - w_j]`` (unscaled queries) is built from two small tensors
    and passed to ``scaled_dot_product_attention`` as an additive mask, so the fused kernel computes the softmax
    without a separate logits tensor. Large grids are processed in query chunks so that at most
    :data:`MAX_BIAS_ELEMENTS` bias values exist at a time.

    Args:
        q, k, v: ``(B, heads, H*W, D)``.
        hw: the grid ``(H, W)`` of queries and keys.
        rel_pos_h, rel_pos_w: ``(L, D)`` tables (resized linearly when ``L != 2 * side - 1``).
    Returns:
        ``(B, heads, H*W, D)``.
    """
    h, w = hw
    b, nh, n, d = q.shape
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)  # (h, h, d)
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)  # (w, w, d)
    r_q = q.reshape(b, nh, h, w, d)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(b, nh, n, h, 1)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(b, nh, n, 1, w)
    if use_recompute_attention(q, k, v, rel_h, rel_w):  # training on CPU: no stored attention map
        return rel_pos_attention(q, k, v, rel_h.view(b, nh, n, h), rel_w.view(b, nh, n, w), scale)
    rows = max(1, MAX_BIAS_ELEMENTS // (b * nh * n))
    if rows >= n:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=(rel_h + rel_w).view(b, nh, n, n), scale=scale
        )
    outs = []
    for s in range(0, n, rows):
        e = min(n, s + rows)
        bias = (rel_h[:, :, s:e] + rel_w[:, :, s:e]).view(b, nh, e - s, n)
        outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=bias, scale=scale))
    return torch.cat(outs, dim=2)


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Splits ``(B, H, W, C)`` into ``(B * nW, ws, ws, C)`` windows, zero-padding the grid to a multiple of ``ws``.

    Returns the windows and the padded grid size.
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws, ws, C)`` -> ``(B, H, W, C)`` with padding cropped."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


class Attention(nn.Module):
    """Multi-head self-attention with BEiT-style q/v bias (k bias fixed at zero) and optional
    decomposed relative position."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[tuple[int, int]] = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("relative position needs the attention grid size (input_size)")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def qkv_bias(self) -> Optional[Tensor]:
        if self.q_bias is None:
            return None
        return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def forward(self, x: Tensor, hw: Optional[tuple[int, int]] = None) -> Tensor:
        """``x``: ``(B, N, C)``; ``hw``: the token grid, required with relative position (N == H*W)."""
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.use_rel_pos:
            out = attention_with_rel_pos(q, k, v, hw, self.rel_pos_h, self.rel_pos_w, self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; global or windowed attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[tuple[int, int]] = None,
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        attn_grid = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, rel_pos_zero_init, attn_grid)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``x``: ``(B, N, C)`` tokens on the grid ``hw`` (``N == H*W``, or ``N > H*W`` with leading prefix
        tokens under global attention)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            b, _, c = x.shape
            windows, pad_hw = window_partition(x.view(b, hw[0], hw[1], c), self.window_size)
            ws = self.window_size
            windows = self.attn(windows.view(-1, ws * ws, c), (ws, ws))
            x = window_unpartition(windows.view(-1, ws, ws, c), ws, pad_hw, hw).reshape(b, -1, c)
        else:
            x = self.attn(x, hw)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, H/p, W/p)``; inputs must be at least one patch on each side."""
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}px patch")
        return self.proj(x)


class EVAViT(nn.Module):
    """EVA vision transformer.

    Args:
        img_size: the input size the relative-position tables of global blocks are made for.
        patch_size: patch (and output) stride.
        embed_dim, depth, num_heads, mlp_dim: transformer shape.
        pos_grid: the absolute-position grid, an int for a square one (as pre-trained; interpolated at run time
            to the input's patch grid). Default: the patch grid of ``img_size``.
        pos_cls_slot: the position table holds a leading CLS slot.
        use_cls_token: prepend a learned CLS token (global attention only).
        use_mask_token: a learned token that replaces masked patches (masked image modelling).
        window_size: window side for windowed blocks; 0 = all global.
        global_block_indexes: blocks with global attention when ``window_size > 0``.
        use_rel_pos: decomposed relative position in every block.
        final_norm: LayerNorm after the last block.
        drop_path_rate: stochastic depth, linearly increasing to this rate.
        use_act_checkpoint: recompute each block in the backward pass (training only).
        init_std: standard deviation of the initial weights (EVA-g pre-training: 0.015).
        init_mode: ``"plain"`` (truncated normal cut at +-2, no rescaling; the patch kernel keeps PyTorch's
            default) or ``"eva"`` (EVA's masked-image-modelling initialisation, ``EVA-01/eva/modeling_pretrain.py``:
            position embedding, tokens, linear and patch-kernel weights truncated normal cut at +-1 std, biases
            zero, then ``attn.proj`` and ``mlp.fc2`` of block ``i`` divided by ``sqrt(2 (i + 1))``).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: Optional[int] = None,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        pos_grid: Optional[int | tuple[int, int]] = None,
        pos_cls_slot: bool = True,
        use_abs_pos: bool = True,
        use_cls_token: bool = False,
        use_mask_token: bool = False,
        window_size: int = 0,
        global_block_indexes: Sequence[int] = (),
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        final_norm: bool = False,
        drop_path_rate: float = 0.0,
        use_act_checkpoint: bool = False,
        init_std: float = 0.02,
        init_mode: str = "plain",
    ):
        super().__init__()
        if init_mode not in ("plain", "eva"):
            raise ValueError(f"init_mode is {init_mode!r}; expected 'plain' or 'eva'")
        if not init_std > 0:
            raise ValueError(f"init_std must be positive, got {init_std!r}")
        self.init_std = float(init_std)
        self.init_mode = init_mode
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        global_block_indexes = tuple(sorted(set(global_block_indexes)))
        if any(i < 0 or i >= depth for i in global_block_indexes):
            raise ValueError(f"global_block_indexes {global_block_indexes} out of range for depth {depth}")
        if use_cls_token and window_size > 0:
            raise ValueError("a CLS token needs global attention in every block (window_size=0)")
        if use_cls_token and use_rel_pos:
            raise ValueError("decomposed relative position is defined for patch tokens only (no CLS token)")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.window_size = window_size
        self.global_block_indexes = global_block_indexes
        self.pos_cls_slot = pos_cls_slot
        self.drop_path_rate = drop_path_rate
        self.use_act_checkpoint = use_act_checkpoint
        mlp_dim = mlp_dim or 4 * embed_dim

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        if use_abs_pos:
            if pos_grid is None:
                pos_grid = (img_size[0] // patch_size, img_size[1] // patch_size)
            self.pos_grid = (pos_grid, pos_grid) if isinstance(pos_grid, int) else tuple(pos_grid)
            num = self.pos_grid[0] * self.pos_grid[1] + int(pos_cls_slot)
            self.pos_embed = nn.Parameter(torch.zeros(1, num, embed_dim))
        else:
            self.pos_grid = None
            self.pos_embed = None

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, 0 to the rate
        feat_grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_dim,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                norm_eps=norm_eps,
                window_size=window_size if i not in global_block_indexes else 0,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                input_size=feat_grid,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        self._init_weights()
        if init_mode == "eva":
            self._init_weights_eva()

    def _init_weights(self):
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=self.init_std)
        for t in (self.cls_token, self.mask_token):
            if t is not None:
                nn.init.trunc_normal_(t, std=self.init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=self.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def _init_weights_eva(self):
        """EVA's masked-image-modelling initialisation (see ``init_mode``)."""
        std = self.init_std
        for t in (self.pos_embed, self.cls_token, self.mask_token):
            if t is not None:
                nn.init.trunc_normal_(t, std=std, a=-std, b=std)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=std, a=-std, b=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for i, block in enumerate(self.blocks):
            block.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.cls_token is not None)

    @property
    def stride(self) -> int:
        return self.patch_size

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (besides biases and norms)."""
        names = {"pos_embed", "cls_token", "mask_token"}
        return {n for n, _ in self.named_parameters() if n in names or "rel_pos" in n}

    def prepare_tokens(self, x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding, masking, CLS and absolute position.

        Args:
            x: ``(B, 3, H, W)`` images.
            mask: optional ``(B, H/p * W/p)`` bool, True where a patch is replaced by the mask token.
        Returns:
            tokens ``(B, prefix + N, C)`` and the patch grid ``(H/p, W/p)``.
        """
        x = self.patch_embed(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("this backbone was built without a mask token (use_mask_token=True)")
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])}")
            w = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        if self.pos_embed is not None:
            x = x + interpolate_abs_pos(self.pos_embed, self.pos_cls_slot, hw, self.pos_grid)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            if self.pos_embed is not None and self.pos_cls_slot:
                cls = cls + self.pos_embed[:, :1]
            x = torch.cat([cls, x], dim=1)
        return x, hw

    def run_block(self, i: int, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Block ``i`` on ``(B, N, C)`` tokens, with activation checkpointing when enabled and training."""
        blk = self.blocks[i]
        if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
        return blk(x, hw)

    def tokens_to_map(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``(B, prefix + N, C)`` tokens -> ``(B, C, H, W)`` patch map (prefix tokens dropped)."""
        x = x[:, self.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], -1, hw[0], hw[1])

    def forward_tokens(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, prefix + N, C)`` tokens after the final norm (pre-training, features)."""
        x, hw = self.prepare_tokens(x, mask)
        for i in range(self.depth):
            x = self.run_block(i, x, hw)
        return self.norm(x)

    def forward_intermediates(
        self, x: Tensor, indices: Optional[Sequence[int] | int] = None, norm: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """Final map and intermediate block outputs.

        Args:
            indices: block indexes whose outputs are returned (negative counts from the end), or an int ``n`` for
                the last ``n`` blocks; default all.
            norm: apply the final norm to the intermediates too.
        Returns:
            ``(B, C, H/p, W/p)`` final map and a list of ``(B, C, H/p, W/p)`` maps in block order.
        """
        if indices is None:
            take = set(range(self.depth))
        elif isinstance(indices, int):
            take = set(range(self.depth - indices, self.depth))
        else:
            take = {i % self.depth for i in indices}
        x, hw = self.prepare_tokens(x)
        outs = []
        for i in range(self.depth):
            x = self.run_block(i, x, hw)
            if i in take:
                outs.append(self.tokens_to_map(self.norm(x) if norm else x, hw))
        return self.tokens_to_map(self.norm(x), hw), outs

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, H/p, W/p)``: the stride-p feature map (any H, W >= p)."""
        x, hw = self.prepare_tokens(x)
        for i in range(self.depth):
            x = self.run_block(i, x, hw)
        return self.tokens_to_map(self.norm(x), hw)
