"""Deformable attention at its edges: float64 end to end, zero queries, double backward."""

import pytest
import torch

from eva_transfer.ms_deform_attn import MSDeformAttn, level_start_indices, ms_deform_attn
from eva_transfer_projects.compat import apply_mmcv

apply_mmcv()
from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention  # noqa: E402

SHAPES = torch.tensor([[9, 7], [5, 4], [3, 2]])
S = int((SHAPES[:, 0] * SHAPES[:, 1]).sum())


def _modules(dtype):
    d_model, levels, heads, points = 32, 3, 4, 2
    ours = MSDeformAttn(d_model, levels, heads, points, value_ratio=0.5).to(dtype)
    ref = MultiScaleDeformableAttention(
        d_model, heads, levels, points, dropout=0.0, batch_first=True, value_proj_ratio=0.5
    ).to(dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def test_float64_module_equals_mmcv_module_to_float64_precision():
    ours, ref = _modules(torch.float64)
    query = torch.randn(2, 10, 32, dtype=torch.float64)
    value = torch.randn(2, S, 32, dtype=torch.float64)
    points = torch.rand(2, 10, 3, 2, dtype=torch.float64)
    out = ours(query, points, value, SHAPES, level_start_indices(SHAPES))
    expected = ref(
        query,
        value=value,
        identity=torch.zeros_like(query),
        reference_points=points,
        spatial_shapes=SHAPES,
        level_start_index=level_start_indices(SHAPES),
    )
    assert out.dtype == torch.float64
    assert (out - expected).abs().max().item() <= 1e-12


@pytest.mark.parametrize("b, q", [(2, 0), (0, 5), (0, 0)])
def test_zero_queries_give_an_empty_output(b, q):
    ours, _ = _modules(torch.float32)
    query = torch.randn(b, q, 32, requires_grad=True)
    value = torch.randn(b, S, 32, requires_grad=True)
    out = ours(query, torch.rand(b, q, 3, 2), value, SHAPES)
    assert out.shape == (b, q, 32)
    out.sum().backward()
    assert value.grad is not None and value.grad.abs().sum() == 0
    # the function on its own
    loc = torch.rand(b, q, 4, 3, 2, 2, requires_grad=True)
    attn = torch.rand(b, q, 4, 3, 2, requires_grad=True)
    out = ms_deform_attn(torch.randn(b, S, 4, 8), SHAPES, loc, attn)
    assert out.shape == (b, q, 32)
    out.sum().backward()
    assert loc.grad.shape == loc.shape and attn.grad.shape == attn.shape


def test_double_backward_is_a_clear_error():
    value = torch.randn(1, S, 2, 4, dtype=torch.float64, requires_grad=True)
    loc = torch.rand(1, 6, 2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    attn = torch.rand(1, 6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    out = ms_deform_attn(value, SHAPES, loc, attn)
    with pytest.raises(RuntimeError, match="double backward .*create_graph=True.* is not supported"):
        torch.autograd.grad(out.square().sum(), value, create_graph=True, allow_unused=True)
    # first-order gradients are unaffected
    (g,) = torch.autograd.grad(ms_deform_attn(value, SHAPES, loc, attn).square().sum(), value)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
