"""2-D rotary position embedding of EVA-02 for the queries and keys of one attention block.

Each head's channels are split in two halves, the first rotated by the token's row, the second by its column,
in interleaved pairs, with the frequencies ``10000 ** (-i / (head_dim / 4))``. Positions are the cell indexes of
the attention grid rescaled to a reference grid (the pre-training patch grid, 16x16 for 224 px at patch 14):
row ``r`` of an ``H``-row grid sits at ``r / H * ref_h``. A windowed block's grid is its window, a global block's
the image's patch grid (any shape), as in EVA-02's detection backbone; timm's ``Eva`` rescales the same way
(``ref_feat_shape``). The sine/cosine table is built by :func:`timm.layers.build_rotary_pos_embed` in float32
(EVA-02's and timm's precision) and applied with :func:`timm.layers.apply_rot_embed_cat`. Leading prefix tokens
(a CLS token) are not rotated.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.layers import apply_rot_embed_cat, build_rotary_pos_embed
from torch import Tensor, nn

__all__ = ["RotaryPosition2d"]


class RotaryPosition2d(nn.Module):
    """Rotates ``q`` and ``k`` of shape ``(B, heads, prefix + H*W, head_dim)`` by their cell in the grid ``(H, W)``.

    Args:
        head_dim: channels per head, a multiple of 4 (two axes, sine and cosine pairs).
        ref_grid: the grid the positions are rescaled to (see the module docstring).
        temperature: the frequency base.
    """

    def __init__(self, head_dim: int, ref_grid: tuple[int, int], temperature: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"rotary position needs a head width divisible by 4, got {head_dim}")
        ref_grid = tuple(ref_grid)
        if len(ref_grid) != 2 or any(isinstance(v, bool) or int(v) != v or v <= 0 for v in ref_grid):
            raise ValueError(f"rope reference grid must be two positive integers, got {ref_grid!r}")
        self.head_dim = head_dim
        self.ref_grid = (int(ref_grid[0]), int(ref_grid[1]))
        self.temperature = float(temperature)
        self._cached: Optional[tuple[tuple, Tensor]] = None  # the last grid's table: windows repeat one grid

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, ref_grid={self.ref_grid}"

    def table(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        """``(H*W, 2 * head_dim)`` float32: the sines, then the cosines, of each cell's angles."""
        key = (int(grid[0]), int(grid[1]), device)
        if self._cached is None or self._cached[0] != key:
            sin, cos = build_rotary_pos_embed(
                [key[0], key[1]],
                dim=self.head_dim,
                temperature=self.temperature,
                in_pixels=False,
                ref_feat_shape=list(self.ref_grid),
                device=device,
                dtype=torch.float32,
            )
            self._cached = (key, torch.cat([sin, cos], dim=-1))
        return self._cached[1]

    def forward(self, q: Tensor, k: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        emb = self.table(grid, q.device)
        prefix = q.shape[-2] - emb.shape[0]

        def rotate(t: Tensor) -> Tensor:
            if not prefix:
                return apply_rot_embed_cat(t, emb)
            return torch.cat([t[..., :prefix, :], apply_rot_embed_cat(t[..., prefix:, :], emb)], dim=-2)

        return rotate(q), rotate(k)
