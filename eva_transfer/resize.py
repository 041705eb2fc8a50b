"""Resizing position tables and patch kernels: every resize of the backbone and of the checkpoint converter.

- Absolute position tables: :func:`interpolate_abs_pos` (the model's run-time resize to the input's patch grid,
  bicubic) and :func:`resize_pos_embed` (a checkpoint's table to the model's grid, through it; the route EVA-01
  takes for patch-14 files is :data:`POS_RESIZE`).
- Patch-embedding kernels: :func:`resize_patch_kernel` (bicubic, or timm's pseudo-inverse).
- Relative-position tables: :func:`resize_rel_pos` for decomposed ``(L, D)`` tables (linear; geometric; the EVA-01
  detectors' ``beit`` rule, :func:`beit_rel_pos_resize`, a not-a-knot cubic spline over geometric offsets) and
  :func:`resize_rel_pos_bias_table` for BEiT-style bias tables with CLS rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Optional

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor

if TYPE_CHECKING:
    from .vit import EVAViT

__all__ = [
    "BEIT_REL_POS_RATIO",
    "POS_RESIZE",
    "beit_rel_pos_resize",
    "interpolate_abs_pos",
    "resize_patch_kernel",
    "resize_pos_embed",
    "resize_rel_pos",
    "resize_rel_pos_bias_table",
]


# --------------------------------------------------------------------------------- absolute position tables
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
    # timm's resampler without its antialiasing: F.interpolate as the authors and ViTDet call it (a table resized
    # down, e.g. EVA-01's 16x16 -> 14x14 step, differs with antialiasing)
    return resample_abs_pos_embed(pos_embed, list(hw), list(grid), num_prefix_tokens=0, antialias=False)


def resize_pos_embed(
    pos: Tensor, grid: tuple[int, int], cls_slot: bool, via: tuple[tuple[int, int], ...] = ()
) -> Tensor:
    """Resizes a ``(1, [1+]G*G, C)`` absolute table (square grid, with or without a CLS slot) to
    ``(1, [1+]gh*gw, C)``, bicubic on the grid; a CLS slot is kept, added (zeros) or dropped to match.

    ``via``: grids passed on the way, one bicubic step each, the table rounded to its dtype after each (as a file
    written in between would hold it); see :data:`POS_RESIZE`."""
    n = pos.shape[1]
    src_cls = _has_cls_slot(n)
    table = pos[:, int(src_cls) :]
    cls = pos[:, :1] if src_cls else pos.new_zeros(1, 1, pos.shape[2])
    g = int(round(math.sqrt(table.shape[1])))
    if g * g != table.shape[1]:
        raise ValueError(f"position table with {n} slots is not a square grid (with or without a CLS slot)")
    have = (g, g)
    for step in (*via, tuple(grid)):
        table = interpolate_abs_pos(table, False, tuple(step), have)  # the one resize the model also uses
        have = tuple(step)
    return torch.cat([cls, table], dim=1) if cls_slot else table


#: routes of the absolute position table to the model's grid (``pos_resize`` of :func:`load_checkpoint`).
#: ``eva``: when the checkpoint's patch kernel is resized, the table first goes to the grid its pre-training image
#: has at the model's patch size (when that image is a whole number of them), then to the model's grid. This is
#: EVA-01's route: ``interpolate_patch_14to16.py`` makes ``eva_psz14to16.pt`` with the 16x16 grid (224 px at
#: patch 14) resized to 14x14 (224 px at patch 16), which their segmentation backbone's loader resizes to 56x56
#: (896 px); their detection backbone keeps 14x14. ``direct``: one bicubic step to the model's grid.
POS_RESIZE = ("eva", "direct")


def _pos_resize_via(sd: Mapping[str, Tensor], vit: EVAViT, route: str) -> tuple[tuple[int, int], ...]:
    """The grids the checkpoint's position table passes on its way to ``vit``'s under ``route`` (:data:`POS_RESIZE`);
    empty for one step."""
    if route not in POS_RESIZE:
        raise ValueError(
            f"unknown position-table resize route {route!r} (expected one of {list(POS_RESIZE)})"
        )
    kernel, pos = sd.get("patch_embed.proj.weight"), sd.get("pos_embed")
    if (
        route == "direct"
        or vit.pos_grid is None
        or not isinstance(kernel, Tensor)
        or not isinstance(pos, Tensor)
    ):
        return ()
    src, dst = tuple(kernel.shape[-2:]), tuple(vit.patch_embed.proj.weight.shape[-2:])
    if kernel.dim() != 4 or pos.dim() != 3 or src == dst:
        return ()
    g = int(round(math.sqrt(pos.shape[1] - int(_has_cls_slot(pos.shape[1])))))
    if (g * src[0]) % dst[0] or (g * src[1]) % dst[1]:
        return ()  # the pre-training image (g patches) is no whole number of the model's patches
    mid = (g * src[0] // dst[0], g * src[1] // dst[1])
    return () if min(mid) < 1 or mid in ((g, g), tuple(vit.pos_grid)) else (mid,)


def _has_cls_slot(n: int) -> bool:
    r = int(round(math.sqrt(n)))
    return r * r != n


# ---------------------------------------------------------------------------------- patch-embedding kernels
def resize_patch_kernel(weight: Tensor, size: tuple[int, int], method: str = "bicubic") -> Tensor:
    """Resizes a ``(C, 3, p, p)`` patch-embedding kernel.

    ``bicubic`` interpolates the kernel as an image (what EVA used for 14->16). ``pinv`` is timm's
    pseudo-inverse resampling, which keeps the patch embedding's response to resized patches.
    """
    if tuple(weight.shape[-2:]) == tuple(size):
        return weight
    if method == "bicubic":
        return F.interpolate(weight.float(), size=size, mode="bicubic", align_corners=False).to(weight.dtype)
    if method == "pinv":
        from timm.layers import resample_patch_embed

        return resample_patch_embed(weight.float(), list(size), verbose=False).to(weight.dtype)
    raise ValueError(f"unknown patch kernel resize method {method!r} (expected 'bicubic' or 'pinv')")


# --------------------------------------------------------------------------------- relative-position tables
def resize_rel_pos(table: Tensor, length: int, method: str = "linear") -> Tensor:
    """Resizes an ``(L, D)`` decomposed relative-position table to ``(length, D)``.

    ``linear``: linear interpolation (as at run time). ``geometric``: cubic interpolation on geometrically
    spaced source offsets, which keeps short-range offsets fine and stretches long-range ones (used for
    evaluation at larger sizes than trained; the ratio is bisected to reach the target). ``beit``: the EVA-01
    detectors' evaluation rule, cubic over geometric offsets with the fixed ratio 1.0903078
    (:func:`beit_rel_pos_resize`).
    """
    src = table.shape[0]
    if src == length:
        return table
    if method == "linear":
        out = F.interpolate(table.t()[None].float(), size=length, mode="linear")[0].t()
        return out.to(table.dtype)
    if method == "geometric":
        return _geometric_cubic(table, length)
    if method == "beit":
        return beit_rel_pos_resize(table, length)
    raise ValueError(
        f"unknown relative-position resize method {method!r} (expected 'linear', 'geometric' or 'beit')"
    )


def _geometric_cubic(table: Tensor, length: int) -> Tensor:
    src, src_half, dst_half = table.shape[0], table.shape[0] // 2, length // 2
    if dst_half <= src_half:
        return resize_rel_pos(table, length, "linear")
    if src % 2 == 0 or src < 5:
        raise ValueError(
            f"the geometric relative-position resize maps odd table lengths (at least 5): got {src} -> {length}"
        )

    def span(q: float) -> float:
        return (1.0 - q**src_half) / (1.0 - q)

    lo, hi = 1.01, 1.5
    for _ in range(100):  # bisect the ratio so that the source offsets reach the target's extent
        q = (lo + hi) / 2
        if span(q) > dst_half:
            hi = q
        else:
            lo = q
    # source offsets 1, 1+q, 1+q+q^2, ...; the spline of the "beit" rule through them
    dis = torch.cumsum(torch.tensor([q**i for i in range(src_half)], dtype=torch.float64), 0)
    x = torch.cat([-dis.flip(0), torch.zeros(1, dtype=torch.float64), dis])
    t = torch.arange(-dst_half, dst_half + 0.1, 1.0, dtype=torch.float64)
    values = table.detach().float().cpu().double()  # the table's values in float32, the result on the CPU
    return _not_a_knot_cubic(x, values, t).to(table.dtype)


#: the fixed ratio of the geometric source offsets in the EVA-01 detectors' "beit" relative-position resize
BEIT_REL_POS_RATIO = 1.0903078


def _not_a_knot_cubic(x: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """Cubic spline through ``(x, y)`` with not-a-knot ends, evaluated at ``t`` (outside ``x``: the end pieces
    extended). ``x``: ``(n,)`` increasing, ``n >= 4``; ``y``: ``(n, D)``; returns ``(len(t), D)``; float64."""
    n = x.shape[0]
    h = x[1:] - x[:-1]
    slope = (y[1:] - y[:-1]) / h[:, None]
    a = torch.zeros(n, n, dtype=x.dtype)
    rhs = torch.zeros(n, y.shape[1], dtype=x.dtype)
    i = torch.arange(1, n - 1)
    a[i, i - 1], a[i, i], a[i, i + 1] = h[:-1], 2 * (h[:-1] + h[1:]), h[1:]
    rhs[1:-1] = 6 * (slope[1:] - slope[:-1])
    # not-a-knot: the third derivative is continuous at the second and the second-to-last knot
    a[0, :3] = torch.stack([-h[1], h[0] + h[1], -h[0]])
    a[-1, -3:] = torch.stack([-h[-1], h[-2] + h[-1], -h[-2]])
    m = torch.linalg.solve(a, rhs)  # second derivatives at the knots
    k = (torch.searchsorted(x, t, right=True) - 1).clamp(0, n - 2)
    hk, left, right = h[k][:, None], (t - x[k])[:, None], (x[k + 1] - t)[:, None]
    return (
        m[k] * right**3 / (6 * hk)
        + m[k + 1] * left**3 / (6 * hk)
        + (y[k] / hk - m[k] * hk / 6) * right
        + (y[k + 1] / hk - m[k + 1] * hk / 6) * left
    )


def beit_rel_pos_resize(rel_pos: Tensor, length: int, ratio: float = BEIT_REL_POS_RATIO) -> Tensor:
    """The EVA-01 detectors' "beit" resize of an ``(L, C)`` relative-position table to ``(length, C)``.

    Source entry ``L//2 + j`` sits at offset ``sum_{i<|j|} ratio**i`` (sign of ``j``): 1, 1+q, 1+q+q^2, ...
    with the fixed ratio ``q`` (1.0903078), so short offsets stay dense and long ones spread. Each channel is a
    cubic spline (not-a-knot ends, end pieces extended) through those points, read at the integer offsets
    ``-(length//2) .. length//2``. The authors apply it in every attention whose table length differs from the
    grid's (global blocks at a larger evaluation size, e.g. 1280 -> 1536).
    """
    src = rel_pos.shape[0]
    if src % 2 == 0 or length % 2 == 0 or src < 5:
        raise ValueError(
            f"the beit relative-position resize maps odd table lengths (at least 5): got {src} -> {length}"
        )
    if src == length:
        return rel_pos
    steps = torch.tensor([ratio**i for i in range(src // 2)], dtype=torch.float64)
    dis = torch.cumsum(steps, 0)
    x = torch.cat([-dis.flip(0), torch.zeros(1, dtype=torch.float64), dis])
    half = length // 2
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    out = _not_a_knot_cubic(x, rel_pos.detach().double().cpu(), t)
    return out.to(device=rel_pos.device, dtype=rel_pos.dtype)


def resize_rel_pos_bias_table(table: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """Resizes a BEiT-style ``((2*Gh-1)*(2*Gw-1) + 3, heads)`` bias table to another grid: the patch-offset part
    bicubic (corners not aligned) as a ``(2*Gh-1, 2*Gw-1)`` image per head, the three CLS rows unchanged."""
    if tuple(src_grid) == tuple(dst_grid):
        return table
    sh, sw = 2 * src_grid[0] - 1, 2 * src_grid[1] - 1
    if table.shape[0] != sh * sw + 3:
        raise ValueError(
            f"relative-position bias table has {table.shape[0]} rows, expected {sh * sw + 3} for a "
            f"{src_grid[0]}x{src_grid[1]} grid with 3 CLS rows"
        )
    dh, dw = 2 * dst_grid[0] - 1, 2 * dst_grid[1] - 1
    patch = table[:-3].t().reshape(1, -1, sh, sw).float()
    patch = F.interpolate(patch, size=(dh, dw), mode="bicubic", align_corners=False)
    patch = patch.reshape(-1, dh * dw).t().to(table.dtype)
    return torch.cat([patch, table[-3:]], dim=0)
