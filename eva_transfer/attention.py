"""Attention with decomposed relative position (the ViTDet/MViTv2 layout): the choice of kernel, and the
training-path kernel that does not keep the attention map.

:func:`attention_with_rel_pos` is what the backbone's attention calls. It builds the bias
``q_i . R_h[h_i - h_j] + q_i . R_w[w_i - w_j]`` from two small tensors (:func:`get_rel_pos`) and chooses:

- training on a CPU (:func:`use_recompute_attention`): :func:`rel_pos_attention`, below;
- inference on many small grids (windows): ``scaled_dot_product_attention`` over groups of images that share one
  bias buffer of :data:`WINDOW_BIAS_ELEMENTS`;
- a bias of at most :data:`MAX_BIAS_ELEMENTS`: one ``scaled_dot_product_attention`` call with it as an additive mask;
- a larger one: the same in query chunks (with gradients, a bias tensor per chunk; in inference, one reused buffer).

The training-path kernel: the logits of query ``i`` (at grid cell ``(h_i, w_i)``) and key ``j`` (at ``(h_j, w_j)``) are

    s_ij = scale * q_i . k_j + rel_h[i, h_j] + rel_w[i, w_j]

with ``rel_h = q . R_h`` and ``rel_w = q . R_w`` (unscaled queries, the ViTDet/MViTv2 layout), ``p = softmax(s)``
over ``j`` and ``o = p v``. PyTorch's CPU attention kernels have no backward for a bias that needs a gradient, so
autograd falls back to the math path, which stores every ``n x n`` map of every block for the backward pass.

:class:`RelPosAttentionFunction` computes the forward pass in query chunks and keeps only the output and the
log-sum-exp ``L_i = log sum_j exp(s_ij)`` per query. The backward pass recomputes each chunk's probabilities
``p_ij = exp(s_ij - L_i)`` and uses the standard softmax-attention gradients

    dv = p^T do,   dp = do v^T,   ds_ij = p_ij (dp_ij - delta_i),   delta_i = do_i . o_i,
    dq = scale * ds k,   dk = scale * ds^T q,

and the two small relative-position gradients are sums of ``ds`` over one key axis:

    d rel_h[i, a] = sum_{j: h_j = a} ds_ij,   d rel_w[i, b] = sum_{j: w_j = b} ds_ij.

They flow back to the queries and the ``R_h`` / ``R_w`` tables through the einsum that built ``rel_h`` and
``rel_w``. Peak extra memory is one chunk's ``(rows, n)`` score block instead of the whole map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .resize import resize_rel_pos

__all__ = [
    "MAX_BIAS_ELEMENTS",
    "MAX_CHUNK_ELEMENTS",
    "RelPosAttentionFunction",
    "WINDOW_BIAS_ELEMENTS",
    "attention_with_rel_pos",
    "get_rel_pos",
    "rel_pos_attention",
    "use_recompute_attention",
]

#: score elements (batch x heads x rows x keys) of one query chunk in the recomputing attention
MAX_CHUNK_ELEMENTS = 1 << 23


def _fused_cpu_forward():
    """PyTorch's fused CPU attention that returns the log-sum-exp with the output (``None`` if absent)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


#: compute the forward with PyTorch's fused CPU kernel (output and log-sum-exp) where it exists
USE_FUSED_FORWARD = True


def _rows_per_chunk(bh: int, n: int, max_elements: int) -> int:
    return max(1, min(n, max_elements // max(1, bh * n)))


def _chunk(buf: Tensor, *shape: int) -> Tensor:
    """A contiguous ``shape`` view of the front of the flat scratch buffer ``buf``."""
    return buf[: math.prod(shape)].view(shape)


def _bias_into(buf: Tensor, rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """``(BH, r, gh * gw)`` bias ``rel_h[..., a] + rel_w[..., b]`` of a query chunk, written into the scratch buffer.

    Writing into one buffer that every chunk of a call reuses, instead of a fresh tensor per chunk, saves the page
    faults of a new large allocation each time (most of the cost of the addition; see docs/records/performance.md)."""
    bh, r, gh = rel_h.shape
    gw = rel_w.shape[-1]
    out = _chunk(buf, bh, r, gh, gw)
    torch.add(rel_h.unsqueeze(-1), rel_w.unsqueeze(-2), out=out)
    return out.view(bh, r, gh * gw)


def _scores_into(buf: Tensor, q: Tensor, k_t: Tensor, rel_h: Tensor, rel_w: Tensor, scale: float) -> Tensor:
    """``(BH, r, n)`` logits of a query chunk in the scratch buffer: ``scale * q k^T`` plus the decomposed bias."""
    return _bias_into(buf, rel_h, rel_w).baddbmm_(q, k_t, alpha=scale)


class RelPosAttentionFunction(torch.autograd.Function):
    """``softmax(scale * q k^T + rel_h[..., h_j] + rel_w[..., w_j]) v`` with a map-free backward.

    Inputs: ``q, k, v`` ``(B, heads, n, D)`` with ``n = gh * gw``; ``rel_h`` ``(B, heads, n, gh)``; ``rel_w``
    ``(B, heads, n, gw)``; ``scale`` a float; ``max_elements`` the score elements per query chunk.
    """

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale, max_elements):
        b, nh, n, d = q.shape
        gh, gw = rel_h.shape[-1], rel_w.shape[-1]
        if gh * gw != n or rel_h.shape[:3] != q.shape[:3] or rel_w.shape[:3] != q.shape[:3]:
            raise ValueError(
                f"relative-position terms {tuple(rel_h.shape)} / {tuple(rel_w.shape)} do not match queries "
                f"{tuple(q.shape)} on a {gh}x{gw} grid"
            )
        bh = b * nh
        q3, k3, v3 = q.reshape(bh, n, d), k.reshape(bh, n, d), v.reshape(bh, n, -1)
        rh3, rw3 = rel_h.reshape(bh, n, gh), rel_w.reshape(bh, n, gw)
        k_t = k3.transpose(1, 2)
        out = q.new_empty(bh, n, v.shape[-1])
        lse = q.new_empty(bh, n, 1)
        rows = _rows_per_chunk(bh, n, max_elements)
        fused = _fused_cpu_forward() if USE_FUSED_FORWARD and q.device.type == "cpu" else None
        buf = q.new_empty(bh * rows * n)  # one chunk's bias / scores, reused by every chunk
        for s in range(0, n, rows):
            e = min(n, s + rows)
            if fused is not None:  # output and log-sum-exp from the fused kernel, the bias as a mask
                bias = _bias_into(buf, rh3[:, s:e], rw3[:, s:e]).view(1, bh, e - s, n)
                o, m = fused(q3[None, :, s:e], k3[None], v3[None], 0.0, False, attn_mask=bias, scale=scale)
                out[:, s:e] = o[0]
                lse[:, s:e] = m[0].unsqueeze(-1)
                continue
            scores = _scores_into(buf, q3[:, s:e], k_t, rh3[:, s:e], rw3[:, s:e], scale)
            m = torch.logsumexp(scores, dim=-1, keepdim=True)
            lse[:, s:e] = m
            torch.bmm(scores.sub_(m).exp_(), v3, out=out[:, s:e])
        ctx.save_for_backward(q, k, v, rel_h, rel_w, out, lse)
        ctx.scale, ctx.rows = scale, rows
        return out.view(b, nh, n, -1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, rel_h, rel_w, out, lse = ctx.saved_tensors
        scale, rows = ctx.scale, ctx.rows
        b, nh, n, d = q.shape
        gh, gw = rel_h.shape[-1], rel_w.shape[-1]
        bh = b * nh
        q3, k3, v3 = q.reshape(bh, n, d), k.reshape(bh, n, d), v.reshape(bh, n, -1)
        rh3, rw3 = rel_h.reshape(bh, n, gh), rel_w.reshape(bh, n, gw)
        do = grad_out.reshape(bh, n, -1)
        k_t, v_t = k3.transpose(1, 2), v3.transpose(1, 2)
        delta = (do * out).sum(-1, keepdim=True)  # (bh, n, 1)
        dq = torch.empty_like(q3)
        dk = torch.zeros_like(k3)
        dv = torch.zeros_like(v3)
        d_rel_h = q.new_empty(bh, n, gh)
        d_rel_w = q.new_empty(bh, n, gw)
        p_buf, ds_buf = q.new_empty(bh * rows * n), q.new_empty(bh * rows * n)  # reused by every chunk
        for s in range(0, n, rows):
            e = min(n, s + rows)
            p = _scores_into(p_buf, q3[:, s:e], k_t, rh3[:, s:e], rw3[:, s:e], scale).sub_(lse[:, s:e]).exp_()
            dv.baddbmm_(p.transpose(1, 2), do[:, s:e])
            ds = torch.bmm(do[:, s:e], v_t, out=_chunk(ds_buf, bh, e - s, n))
            ds.sub_(delta[:, s:e]).mul_(p)  # (bh, r, n)
            grid = ds.view(bh, e - s, gh, gw)
            torch.sum(grid, dim=-1, out=d_rel_h[:, s:e])
            torch.sum(grid, dim=-2, out=d_rel_w[:, s:e])
            torch.bmm(ds, k3, out=dq[:, s:e])
            dk.baddbmm_(ds.transpose(1, 2), q3[:, s:e])
        dq.mul_(scale)
        dk.mul_(scale)
        return (
            dq.view_as(q),
            dk.view_as(k),
            dv.view_as(v),
            d_rel_h.view_as(rel_h),
            d_rel_w.view_as(rel_w),
            None,
            None,
        )


def rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_h: Tensor,
    rel_w: Tensor,
    scale: float,
    max_elements: int | None = None,
) -> Tensor:
    """Attention with a decomposed relative-position bias whose backward recomputes the map per query chunk.

    Args:
        q, k, v: ``(B, heads, n, D)`` with ``n = gh * gw`` (row-major grid).
        rel_h: ``(B, heads, n, gh)``: the bias of each query towards each key row.
        rel_w: ``(B, heads, n, gw)``: the bias of each query towards each key column.
        scale: factor of ``q k^T`` (the bias is not scaled).
        max_elements: score elements per query chunk (default :data:`MAX_CHUNK_ELEMENTS`).
    Returns:
        ``(B, heads, n, D)``, equal to plain softmax attention with the bias ``rel_h[i, h_j] + rel_w[i, w_j]``.
    """
    if max_elements is None:
        max_elements = MAX_CHUNK_ELEMENTS
    return RelPosAttentionFunction.apply(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        rel_h.contiguous(),
        rel_w.contiguous(),
        scale,
        max_elements,
    )


def use_recompute_attention(*tensors: Tensor) -> bool:
    """Whether :func:`rel_pos_attention` should replace SDPA: gradients are being recorded for one of the tensors
    and the device has no fused kernel with a bias gradient (CPU). On CUDA, SDPA's memory-efficient kernel
    computes the bias gradient itself without keeping the map."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return False
    return tensors[0].device.type == "cpu"


# ---------------------------------------------------------------------- which kernel computes the attention
def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    Args:
        rel_pos: ``(L, C)`` table; resized linearly (:func:`eva_transfer.resize.resize_rel_pos`) if
            ``L != 2 * max(q_size, k_size) - 1``.
    Returns:
        ``(q_size, k_size, C)``.
    """
    rel_pos = resize_rel_pos(rel_pos, 2 * max(q_size, k_size) - 1, "linear")
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


#: attention logits materialised at once (per call) before the queries are processed in chunks
MAX_BIAS_ELEMENTS = 1 << 25

#: bias elements of one group of images (windows) in inference: a buffer of 8 MB in float32, which glibc's
#: allocator recycles between calls (a larger one is a fresh mapping, page-faulted on every call)
WINDOW_BIAS_ELEMENTS = 1 << 21


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
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, rel_h, rel_w))
    images = WINDOW_BIAS_ELEMENTS // (nh * n * n)
    if not grad and 0 < images < b:
        # inference on many small grids (windows): groups of images share one bias buffer that stays below the
        # allocator's reuse limit, instead of one large fresh bias of every image (its page faults each call)
        buf = q.new_empty(images * nh * n * n)
        out = q.new_empty(b, nh, n, v.shape[-1])
        for s in range(0, b, images):
            e = min(b, s + images)
            bias = buf[: (e - s) * nh * n * n].view(e - s, nh, n, h, w)
            torch.add(rel_h[s:e], rel_w[s:e], out=bias)
            out[s:e] = F.scaled_dot_product_attention(
                q[s:e], k[s:e], v[s:e], attn_mask=bias.view(e - s, nh, n, n), scale=scale
            )
        return out
    if rows >= n:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=(rel_h + rel_w).view(b, nh, n, n), scale=scale
        )
    if grad:
        # gradients through SDPA (a GPU): each chunk's bias is its own tensor, as the kernel may save it
        outs = []
        for s in range(0, n, rows):
            e = min(n, s + rows)
            bias = (rel_h[:, :, s:e] + rel_w[:, :, s:e]).view(b, nh, e - s, n)
            outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=bias, scale=scale))
        return torch.cat(outs, dim=2)
    # inference: one bias buffer for every chunk (a fresh tensor per chunk costs its page faults each time) and
    # the chunks' outputs written into one output tensor
    buf = q.new_empty(b * nh * rows * n)
    out = q.new_empty(b, nh, n, v.shape[-1])
    for s in range(0, n, rows):
        e = min(n, s + rows)
        bias = buf[: b * nh * (e - s) * n].view(b, nh, e - s, h, w)
        torch.add(rel_h[:, :, s:e], rel_w[:, :, s:e], out=bias)
        out[:, :, s:e] = F.scaled_dot_product_attention(
            q[:, :, s:e], k, v, attn_mask=bias.view(b, nh, e - s, n), scale=scale
        )
    return out
