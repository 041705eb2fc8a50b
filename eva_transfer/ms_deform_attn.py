"""Multi-scale deformable attention in pure PyTorch (no compiled extension), on CPU and GPU, any input size.

Semantics are those of Deformable DETR / mmcv's ``multi_scale_deformable_attn``: every query, in every head,
samples ``P`` points on each of ``L`` value maps by bilinear interpolation (zero outside the map, pixel centres at
``(i + 0.5) / size``, i.e. ``grid_sample(..., align_corners=False, padding_mode="zeros")``) and returns their sum
weighted by the attention weights.

Instead of one ``grid_sample`` per level followed by a stack and a weighted sum (which materialises
``B x Q x heads x L x P x D`` sampled values, and a second copy for the product), every bilinear corner becomes
a (row, weight) pair - weight = attention weight x bilinear weight, zero for a corner outside its map - and one
``embedding_bag`` call gathers and sums the value rows directly, with no per-level loop. The backward pass is
written out: the location and attention gradients follow from the corner weights' gradients in a few element-wise
operations, the value gradient is the transposed sum (a sparse matrix product), and the corner weights' gradient is
``embedding_bag``'s gather-dot. Only ``B x Q x heads x L x P x 4`` scalars are kept for the backward pass, never a
``x D`` tensor per sample.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MSDeformAttn", "ms_deform_attn", "make_reference_points", "level_start_indices"]


def level_start_indices(spatial_shapes: Tensor) -> Tensor:
    """``(L, 2)`` level sizes ``(H, W)`` -> ``(L,)`` offsets of each level in the flattened value sequence."""
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def make_reference_points(shapes: Sequence[tuple[int, int]], device=None, dtype=torch.float32) -> Tensor:
    """Normalised pixel centres of every position of the grids ``shapes``, concatenated in order.

    Returns:
        ``(1, sum(H*W), 1, 2)`` points ``(x, y)`` in ``(0, 1)``; the level axis broadcasts over the levels sampled.
    """
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid(
            (torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
            (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
            indexing="ij",
        )
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1))
    return torch.cat(points, dim=0)[None, :, None, :]


def _check_shapes(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
):
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, heads, C/heads), got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be (B, Q, heads, L, P, 2), got shape {tuple(sampling_locations.shape)}"
        )
    b, s, heads, _ = value.shape
    _, q, heads_l, levels, points, _ = sampling_locations.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape != (levels, 2):
        raise ValueError(
            f"spatial_shapes must be ({levels}, 2) for {levels} levels, got {tuple(spatial_shapes.shape)}"
        )
    if sampling_locations.shape[0] != b or heads_l != heads:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value {tuple(value.shape)} "
            "in batch or heads"
        )
    if tuple(attention_weights.shape) != (b, q, heads, levels, points):
        raise ValueError(
            f"attention_weights must be {(b, q, heads, levels, points)}, got {tuple(attention_weights.shape)}"
        )
    total = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    if total != s:
        raise ValueError(
            f"value has {s} positions but spatial_shapes {spatial_shapes.tolist()} sum to {total}"
        )


def _refuse_double_backward() -> None:
    """The backward passes below are written out and not themselves differentiable. The autograd engine runs a
    backward with grad mode on exactly when the caller asked for ``create_graph=True``: refuse it there, rather
    than return a second derivative that silently misses this op's terms."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "ms_deform_attn: double backward (autograd.grad / backward with create_graph=True) is not supported; "
            "its backward pass is written out and is differentiable once only"
        )


class _BilinearCorners(torch.autograd.Function):
    """Weights of the four bilinear corners of every sampling point, times its attention weight.

    Forward: ``locations (..., L, P, 2)`` normalised, ``attention (..., L, P)``, level sizes ``size (L, 1, 2)``
    as ``(W, H)`` -> ``weights (..., L, P, 4)`` (zero for a corner outside its map; corners ordered (y0, x0),
    (y0, x1), (y1, x0), (y1, x1)), integer top-left corners ``corner (..., L, P, 2)`` as ``(x0, y0)`` and
    ``inside (..., L, P, 4)``. x and y are handled together; the backward pass is written out (a handful of
    ``(..., L, P)`` operations) rather than recorded op by op.
    """

    @staticmethod
    def forward(ctx, locations: Tensor, attention: Tensor, size: Tensor):
        # pixel coordinates, align_corners=False: pixel centre i sits at (i + 0.5) / size. Points more than a pixel
        # outside read zeros whatever their distance, so clamping there changes nothing and keeps integers small.
        xy = torch.minimum((locations * size - 0.5).clamp_(min=-2.0), size + 1)
        corner = torch.floor(xy)
        frac = xy.sub_(corner)  # (..., 2): fx, fy
        corner = corner.to(torch.int32)
        limit = size.to(torch.int32)
        low_in = (corner >= 0) & (corner < limit)  # x0 / y0 inside
        high_in = (corner >= -1) & (corner < limit - 1)  # x1 / y1 inside
        x0_in, y0_in = low_in.unbind(-1)
        x1_in, y1_in = high_in.unbind(-1)
        inside = torch.stack([y0_in & x0_in, y0_in & x1_in, y1_in & x0_in, y1_in & x1_in], dim=-1)
        fx, fy = frac.unbind(-1)
        gx = 1 - fx
        gy_a = (1 - fy) * attention
        fy_a = fy * attention
        weights = torch.stack([gy_a * gx, gy_a * fx, fy_a * gx, fy_a * fx], dim=-1).mul_(inside)
        ctx.save_for_backward(frac, inside, attention, size)
        ctx.mark_non_differentiable(corner, inside)
        return weights, corner, inside

    @staticmethod
    def backward(ctx, grad_weights: Tensor, *_):
        _refuse_double_backward()
        frac, inside, attention, size = ctx.saved_tensors
        fx, fy = frac.unbind(-1)
        g00, g01, g10, g11 = (grad_weights * inside).unbind(-1)
        gx = 1 - fx
        gy = 1 - fy
        grad_attention = gy * (g00 * gx + g01 * fx) + fy * (g10 * gx + g11 * fx)
        grad_fx = gy * (g01 - g00) + fy * (g11 - g10)
        grad_fy = gx * (g10 - g00) + fx * (g11 - g01)
        grad_locations = torch.stack([grad_fx, grad_fy], dim=-1).mul_(attention.unsqueeze(-1) * size)
        return grad_locations, grad_attention, None


class _WeightedRowSum(torch.autograd.Function):
    """``out[n] = sum_k weights[n, k] * table[rows[n, k]]``: ``table (R, D)``, ``rows``/``weights (N, K)`` ->
    ``(N, D)``, by ``embedding_bag``. The table's gradient is the transposed sum, a sparse ``(R, N)`` matrix times
    the output gradient (no sort, no ``N x K x D`` intermediate)."""

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(table, rows, weights)
        return F.embedding_bag(rows, table, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad: Tensor):
        _refuse_double_backward()
        table, rows, weights = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            n, k = rows.shape
            bags = torch.arange(n, device=rows.device).repeat_interleave(k)
            # float32 accumulation also for half-precision tables
            acc = torch.promote_types(table.dtype, torch.float32)
            transposed = torch.sparse_coo_tensor(
                torch.stack([rows.reshape(-1).long(), bags]),
                weights.reshape(-1).to(acc),
                (table.shape[0], n),
                check_invariants=False,
            )
            grad_table = torch.sparse.mm(transposed, grad.to(acc)).to(table.dtype)
        if ctx.needs_input_grad[2]:
            # d out[n] / d weights[n, k] = table[rows[n, k]]: embedding_bag's own weight gradient (a gather-dot)
            with torch.enable_grad():
                w = weights.detach().requires_grad_()
                out = F.embedding_bag(rows, table.detach(), mode="sum", per_sample_weights=w)
                (grad_weights,) = torch.autograd.grad(out, w, grad)
        return grad_table, None, grad_weights


def ms_deform_attn(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Multi-scale deformable attention.

    Args:
        value: ``(B, S, heads, D)``, the ``L`` maps flattened row-major and concatenated (``S = sum(H_l * W_l)``).
        spatial_shapes: ``(L, 2)`` integer ``(H_l, W_l)``.
        sampling_locations: ``(B, Q, heads, L, P, 2)`` normalised ``(x, y)``; ``[0, 1]`` spans a map, points
            outside read zeros.
        attention_weights: ``(B, Q, heads, L, P)``.
    Returns:
        ``(B, Q, heads * D)``.
    """
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    b, s, heads, d = value.shape
    q, levels = sampling_locations.shape[1], sampling_locations.shape[3]
    if (
        b * q * heads * sampling_locations.shape[4] == 0
    ):  # no query, no image or no point: an empty (or zero) sum
        empty = value.new_zeros(b, q, heads * d)
        # connected to the inputs so that a backward pass gives them (zero) gradients
        return empty + 0 * (value.sum() + sampling_locations.sum() + attention_weights.sum()).to(value.dtype)
    shapes = spatial_shapes.to(device=value.device, dtype=torch.long)
    # coordinates in at least float32 (a half-precision location is off by a pixel on large maps)
    compute_dtype = torch.promote_types(sampling_locations.dtype, torch.float32)
    size = shapes.flip(-1).view(levels, 1, 2).to(compute_dtype)  # (W, H) per level
    weights, corner, inside = _BilinearCorners.apply(
        sampling_locations.to(compute_dtype), attention_weights.to(compute_dtype), size
    )

    # rows of value viewed as (B * S * heads, D): row = (b * S + position) * heads + head
    index_dtype = torch.int32 if b * s * heads < 2**31 else torch.long
    w_l = shapes[:, 1].view(levels, 1).to(index_dtype)
    starts = level_start_indices(shapes).view(levels, 1).to(index_dtype)
    batch_head = torch.arange(b, device=value.device, dtype=index_dtype).view(b, 1, 1, 1, 1) * (
        s * heads
    ) + torch.arange(heads, device=value.device, dtype=index_dtype).view(1, 1, heads, 1, 1)
    x0, y0 = corner.to(index_dtype).unbind(-1)
    top_left = (y0 * w_l + x0 + starts) * heads + batch_head  # (B, Q, heads, L, P)
    corner_step = torch.stack([torch.zeros_like(w_l), torch.ones_like(w_l), w_l, w_l + 1], dim=-1) * heads
    rows = torch.where(inside, top_left.unsqueeze(-1) + corner_step, 0)  # (B, Q, heads, L, P, 4)

    # bags ordered (b, q, head): the (B * Q * heads, D) result is already the (B, Q, heads * D) layout
    out = _WeightedRowSum.apply(
        value.reshape(b * s * heads, d),
        rows.reshape(b * q * heads, -1),
        weights.reshape(b * q * heads, -1).to(value.dtype),
    )
    return out.view(b, q, heads * d)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR / ViT-Adapter layout).

    Args:
        d_model: query and output width.
        n_levels: number of value maps.
        n_heads: attention heads; must divide ``int(d_model * value_ratio)``.
        n_points: sampling points per head and level.
        value_ratio: the value projection's width relative to ``d_model`` (ViT-Adapter samples a narrower value).
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        value_ratio: float = 1.0,
    ):
        super().__init__()
        value_dim = int(d_model * value_ratio)
        if value_dim % n_heads:
            raise ValueError(
                f"the value width {value_dim} (d_model {d_model} x value_ratio {value_ratio}) is not divisible by "
                f"{n_heads} heads"
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Offsets start on a ring of directions, one per head, the k-th point k steps out; uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], dim=-1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value_input: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Optional[Tensor] = None,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: ``(B, Q, d_model)``.
            reference_points: ``(B or 1, Q, L or 1, 2)`` normalised ``(x, y)``; offsets are in pixels of each level.
            value_input: ``(B, S, d_model)``, the levels flattened and concatenated.
            spatial_shapes: ``(L, 2)`` long ``(H_l, W_l)``.
            level_start_index: ``(L,)``; implied by ``spatial_shapes`` (accepted for the usual call signature).
            padding_mask: optional ``(B, S)`` bool, True at padded positions (their value is zeroed).
        Returns:
            ``(B, Q, d_model)``.
        """
        b, q, _ = query.shape
        s = value_input.shape[1]
        if spatial_shapes.shape[0] != self.n_levels:
            raise ValueError(
                f"this module samples {self.n_levels} levels, spatial_shapes has {spatial_shapes.shape[0]}"
            )
        if reference_points.dim() != 4 or reference_points.shape[-1] != 2:
            raise ValueError(f"reference_points must be (B, Q, L, 2), got {tuple(reference_points.shape)}")
        value = self.value_proj(value_input)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, s, self.n_heads, self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, q, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level: normalise by (W_l, H_l). In at least float32 even under mixed
        # precision (a half-precision location is off by a fraction of a pixel on large maps); float64 stays float64.
        dtype = torch.promote_types(torch.promote_types(offsets.dtype, reference_points.dtype), torch.float32)
        normalizer = spatial_shapes.flip(-1).to(dtype)
        locations = reference_points.to(dtype)[:, :, None, :, None, :] + (
            offsets.to(dtype) / normalizer[None, None, None, :, None, :]
        )
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
