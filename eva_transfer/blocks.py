"""The parts of the EVA vision transformer: patch embedding, attention (windowed or global, decomposed relative
position or a BEiT-style bias table; EVA-02's rotary position and output norm as options), the MLP (GELU or EVA-02's
SwiGLU, optionally with a norm before its output projection) and the pre-norm block.
:class:`eva_transfer.vit.EVAViT` stacks them.

Tokens are ``(B, N, C)`` sequences with their patch grid ``(H, W)``; window attention pads the grid to a multiple
of the window and crops afterwards.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SwiGLU
from torch import Tensor, nn

from .attention import attention_with_rel_pos
from .resize import resize_rel_pos_bias_table
from .rope import RotaryPosition2d

__all__ = [
    "MLP_TYPES",
    "Attention",
    "Block",
    "Mlp",
    "PatchEmbed",
    "beit_rel_pos_index",
    "window_partition",
    "window_unpartition",
]

logger = logging.getLogger(__name__)


def beit_rel_pos_index(grid: tuple[int, int], device=None) -> Tensor:
    """Index into a BEiT-style relative-position bias table for a grid with one leading CLS token.

    The table has ``(2*Gh-1) * (2*Gw-1)`` patch-offset rows followed by three CLS rows: CLS->patch,
    patch->CLS, CLS->CLS. Returns a ``(1+N, 1+N)`` long tensor, ``N = Gh*Gw``; row/column 0 is the CLS token.
    """
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    patch = (ys[:, None] - ys[None, :] + gh - 1) * (2 * gw - 1) + (xs[:, None] - xs[None, :] + gw - 1)
    num = (2 * gh - 1) * (2 * gw - 1)
    index = torch.empty(gh * gw + 1, gh * gw + 1, dtype=torch.long, device=device)
    index[1:, 1:] = patch
    index[0, :] = num
    index[:, 0] = num + 1
    index[0, 0] = num + 2
    return index


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
    # contiguous: with one window row, reshape could return a strided view that later ``view`` calls reject
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)
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
    decomposed relative position.

    ``rope_ref_grid``: rotate q and k by their cell in the attention grid (:class:`RotaryPosition2d`, positions
    rescaled to this grid); None: no rotary position. ``out_norm``: a LayerNorm on the heads' concatenated output
    before the output projection (EVA-02's sub-LN in attention; timm's ``scale_attn_inner``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[tuple[int, int]] = None,
        use_rel_pos_bias: bool = False,
        rope_ref_grid: Optional[tuple[int, int]] = None,
        out_norm: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if use_rel_pos and use_rel_pos_bias:
            raise ValueError(
                "choose one relative position: decomposed (use_rel_pos) or a bias table (use_rel_pos_bias)"
            )
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
        # BEiT-style bias table with CLS rows, one per block, made for the grid ``input_size``
        self.rel_pos_bias_grid = tuple(input_size) if use_rel_pos_bias and input_size is not None else None
        if use_rel_pos_bias:
            if input_size is None:
                raise ValueError("a relative-position bias table needs the attention grid size (input_size)")
            rows = (2 * input_size[0] - 1) * (2 * input_size[1] - 1) + 3
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        else:
            self.relative_position_bias_table = None
        self.rope = RotaryPosition2d(self.head_dim, rope_ref_grid) if rope_ref_grid is not None else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if out_norm else None

    def rel_pos_bias(self, hw: tuple[int, int], prefix: int) -> Tensor:
        """``(heads, prefix + H*W, prefix + H*W)`` bias of the table on the grid ``hw`` (``prefix``: 0 or 1 CLS
        token); the table is resized (:func:`resize_rel_pos_bias_table`) only when ``hw`` is not its grid."""
        if prefix not in (0, 1):
            raise ValueError(
                f"a relative-position bias table has rows for one CLS token, got {prefix} prefix tokens"
            )
        table = resize_rel_pos_bias_table(self.relative_position_bias_table, self.rel_pos_bias_grid, hw)
        key = (tuple(hw), prefix, table.device)
        cached = getattr(self, "_bias_index", None)
        if cached is None or cached[0] != key:  # one grid cached: the index is (1+N)^2 longs
            index = beit_rel_pos_index(hw, table.device)
            cached = (key, index if prefix else index[1:, 1:].contiguous())
            self._bias_index = cached
        index = cached[1]
        n = index.shape[0]
        return table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)

    def qkv_bias(self) -> Optional[Tensor]:
        if self.q_bias is None:
            return None
        return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def forward(self, x: Tensor, hw: Optional[tuple[int, int]] = None) -> Tensor:
        """``x``: ``(B, N, C)``; ``hw``: the token grid, required with relative or rotary position (N == H*W, or
        leading prefix tokens and H*W patch tokens)."""
        b, n, c = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv_bias())
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope is not None:
            q, k = self.rope(q, k, hw)
        if self.use_rel_pos:
            out = attention_with_rel_pos(q, k, v, hw, self.rel_pos_h, self.rel_pos_w, self.scale)
        elif self.relative_position_bias_table is not None:
            bias = self.rel_pos_bias(hw, n - hw[0] * hw[1]).to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, c)
        if self.norm is not None:
            out = self.norm(out)
        return self.proj(out)


class Mlp(nn.Module):
    """GELU MLP; ``norm``: a LayerNorm on the hidden features before ``fc2`` (timm's ``scale_mlp``)."""

    def __init__(self, dim: int, hidden_dim: int, norm: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden_dim, eps=norm_eps) if norm else None
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.fc1(x))
        if self.norm is not None:
            x = self.norm(x)
        return self.fc2(x)


#: the MLPs a :class:`Block` can hold: GELU (EVA-01) or SwiGLU (EVA-02: ``fc2(norm(silu(fc1_g x) * fc1_x x))``)
MLP_TYPES = ("gelu", "swiglu")


class Block(nn.Module):
    """Pre-norm transformer block; global or windowed attention.

    ``mlp_type``: one of :data:`MLP_TYPES`; ``mlp_norm``: a LayerNorm before the MLP's output projection
    (EVA-02's sub-LN); ``attn_norm``: the same in attention (:class:`Attention` ``out_norm``); ``rope_ref_grid``:
    rotary position, on the window grid in a windowed block and on the whole grid in a global one."""

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
        use_rel_pos_bias: bool = False,
        layer_scale_init: Optional[float] = None,
        mlp_type: str = "gelu",
        mlp_norm: bool = False,
        attn_norm: bool = False,
        rope_ref_grid: Optional[tuple[int, int]] = None,
    ):
        super().__init__()
        if mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type is {mlp_type!r}; expected one of {MLP_TYPES}")
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        attn_grid = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias,
            use_rel_pos,
            rel_pos_zero_init,
            attn_grid,
            use_rel_pos_bias,
            rope_ref_grid=rope_ref_grid,
            out_norm=attn_norm,
            norm_eps=norm_eps,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if mlp_type == "swiglu":
            norm_layer = partial(nn.LayerNorm, eps=norm_eps) if mlp_norm else None
            self.mlp = SwiGLU(dim, mlp_dim, norm_layer=norm_layer)
        else:
            self.mlp = Mlp(dim, mlp_dim, norm=mlp_norm, norm_eps=norm_eps)
        # LayerScale: per-channel gains on the two residual branches (BEiT / EVA segmentation second model set)
        if layer_scale_init is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``x``: ``(B, N, C)`` tokens on the grid ``hw`` (``N == H*W``, or ``N > H*W`` with leading prefix
        tokens under global attention)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            b, _, c = x.shape
            windows, pad_hw = window_partition(x.view(b, hw[0], hw[1], c), self.window_size)
            ws = self.window_size
            windows = self.attn(windows.reshape(-1, ws * ws, c), (ws, ws))
            x = window_unpartition(windows.view(-1, ws, ws, c), ws, pad_hw, hw).reshape(b, -1, c)
        else:
            x = self.attn(x, hw)
        if self.gamma_1 is not None:
            x = shortcut + self.drop_path(self.gamma_1 * x)
            return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self._warned_floor = False

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, floor(H/p), floor(W/p))``; inputs must be at least one patch on each side.

        A side that is not a multiple of the patch is floored, as in timm's and Detectron2's ViT: the last
        ``H % p`` rows and ``W % p`` columns are not seen (a warning names them, once per module)."""
        if x.dim() != 4:
            raise ValueError(
                f"x: expected a (B, C, H, W) image batch, got a {x.dim()}-D tensor {tuple(x.shape)}"
            )
        if x.shape[1] != self.proj.in_channels:
            raise ValueError(
                f"x: expected {self.proj.in_channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than one {self.patch_size}px patch")
        drop_h, drop_w = x.shape[-2] % self.patch_size, x.shape[-1] % self.patch_size
        if (drop_h or drop_w) and not self._warned_floor:
            self._warned_floor = True
            logger.warning(
                "input %dx%d is not a multiple of the %d px patch: the last %d rows and %d columns of pixels are "
                "dropped (floor, as timm and Detectron2); pad or resize inputs to a multiple to use them "
                "(warned once)",
                x.shape[-2],
                x.shape[-1],
                self.patch_size,
                drop_h,
                drop_w,
            )
        return self.proj(x)
