"""Multi-scale deformable attention against mmcv's PyTorch path (the reference semantics), forward and backward."""

import pytest
import torch

from eva_transfer.ms_deform_attn import (
    MSDeformAttn,
    level_start_indices,
    make_reference_points,
    ms_deform_attn,
)
from eva_transfer_projects.compat import apply_mmcv

apply_mmcv()
from mmcv.ops.multi_scale_deform_attn import (  # noqa: E402
    MultiScaleDeformableAttention,
    multi_scale_deformable_attn_pytorch,
)

CASES = [
    # (batch, queries, heads, head width, points, level shapes)
    (2, 37, 4, 8, 4, [(13, 17), (7, 9), (4, 5)]),  # odd sizes, three levels (the injector's layout)
    (1, 50, 2, 5, 3, [(6, 11)]),  # one level (the extractor's layout)
    (3, 11, 1, 16, 2, [(1, 1), (2, 8), (9, 3), (5, 5)]),  # a 1x1 level, four levels
]


def _inputs(b, q, heads, d, p, shapes, dtype=torch.float32):
    shapes = torch.tensor(shapes, dtype=torch.long)
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    levels = shapes.shape[0]
    value = torch.randn(b, s, heads, d, dtype=dtype)
    # [-0.3, 1.3]: about a third of the points fall partly or wholly outside their map
    loc = torch.rand(b, q, heads, levels, p, 2, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(b, q, heads, levels, p, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, loc, weights


def _assert_equal(ours, ref, tol, name):
    """Max difference <= tol, scaled by the reference's largest magnitude when that exceeds 1: location gradients
    reach ~40 here (a pixel is 1/W of the normalised range), where float32 rounding of any implementation - mmcv's
    own against a float64 run included - is ~2e-5 absolute."""
    ours, ref = ours.detach(), ref.detach()
    scale = max(1.0, float(ref.abs().max()))
    err = float((ours - ref).abs().max())
    assert err <= tol * scale, f"{name}: max difference {err:.3g} > {tol:g} x {scale:.3g}"


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_equal_mmcv(case, dtype, tol):
    value, shapes, loc, weights = _inputs(*case, dtype=dtype)
    ours_in = [t.clone().requires_grad_() for t in (value, loc, weights)]
    ref_in = [t.clone().requires_grad_() for t in (value, loc, weights)]
    ours = ms_deform_attn(ours_in[0], shapes, ours_in[1], ours_in[2])
    ref = multi_scale_deformable_attn_pytorch(ref_in[0], shapes, ref_in[1], ref_in[2])
    assert ours.shape == ref.shape == (case[0], case[1], case[2] * case[3])
    assert ours.dtype == dtype
    _assert_equal(ours, ref, tol, "output")
    grad = torch.randn_like(ref)
    g_ours = torch.autograd.grad(ours, ours_in, grad)
    g_ref = torch.autograd.grad(ref, ref_in, grad)
    for name, a, r in zip(("value", "sampling_locations", "attention_weights"), g_ours, g_ref):
        assert r.abs().max() > 0, name
        _assert_equal(a, r, tol, f"gradient of {name}")


def test_gradcheck_float64():
    value, shapes, loc, weights = _inputs(1, 5, 2, 3, 2, [(4, 5), (2, 3)], dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(lambda v, lo, w: ms_deform_attn(v, shapes, lo, w), inputs)


def test_bfloat16_follows_the_float32_result():
    value, shapes, loc, weights = _inputs(*CASES[0])
    low = [t.bfloat16().requires_grad_() for t in (value, loc, weights)]
    out = ms_deform_attn(low[0], shapes, low[1], low[2])
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in low)
    # coordinates are computed in float32, so only the inputs' own rounding shows
    v32, loc32, w32 = (t.detach().float() for t in low)
    expected = ms_deform_attn(v32, shapes, loc32, w32)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_module_under_autocast(monkeypatch):
    import eva_transfer.ms_deform_attn as module

    seen = []

    def recording(value, spatial_shapes, sampling_locations, attention_weights):
        seen.append(sampling_locations.dtype)
        return ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights)

    monkeypatch.setattr(module, "ms_deform_attn", recording)
    attn = MSDeformAttn(32, n_levels=2, n_heads=4, n_points=2, value_ratio=0.5)
    shapes = torch.tensor([[40, 50], [20, 25]])
    query = torch.randn(1, 6, 32, requires_grad=True)
    value = torch.randn(1, 2500, 32)
    ref = torch.rand(1, 6, 1, 2)
    expected = attn(query, ref, value, shapes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(query, ref, value, shapes)
    assert out.dtype == torch.bfloat16
    assert seen == [torch.float32, torch.float32]
    out.float().sum().backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def test_points_far_outside_read_zero():
    value, shapes, loc, weights = _inputs(1, 6, 2, 4, 3, [(5, 4), (3, 3)])
    far = loc.clone()
    far[..., 0] = 3.0  # two map widths to the right of every level
    assert ms_deform_attn(value, shapes, far, weights).abs().max() == 0


def test_module_equals_mmcv_module():
    d_model, levels, heads, points = 32, 3, 4, 2
    shapes = torch.tensor([[9, 7], [5, 4], [3, 2]])
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    ours = MSDeformAttn(d_model, levels, heads, points, value_ratio=0.5)
    ref = MultiScaleDeformableAttention(
        d_model, heads, levels, points, dropout=0.0, batch_first=True, value_proj_ratio=0.5
    )
    with torch.no_grad():  # move off the initial state so every projection matters
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.load_state_dict(ours.state_dict())
    query = torch.randn(2, 10, d_model)
    value = torch.randn(2, s, d_model)
    ref_points = torch.rand(2, 10, levels, 2)
    mask = torch.zeros(2, s, dtype=torch.bool)
    mask[1, -5:] = True
    out = ours(query, ref_points, value, shapes, level_start_indices(shapes), padding_mask=mask)
    expected = ref(
        query,
        value=value,
        identity=torch.zeros_like(query),
        reference_points=ref_points,
        spatial_shapes=shapes,
        level_start_index=level_start_indices(shapes),
        key_padding_mask=mask,
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_initial_offsets_ring():
    attn = MSDeformAttn(16, n_levels=2, n_heads=4, n_points=3)
    offsets = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 looks right (+x), head 1 down (+y), point k is k+1 pixels out, the same on every level
    torch.testing.assert_close(offsets[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(offsets[1, 0, 2], torch.tensor([0.0, 3.0]), atol=1e-6, rtol=0)
    assert attn.attention_weights.weight.abs().max() == 0


def test_make_reference_points_gives_pixel_centres():
    ref = make_reference_points([(2, 4), (1, 1)])
    assert ref.shape == (1, 9, 1, 2)
    torch.testing.assert_close(ref[0, :4, 0, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(ref[0, 4, 0], torch.tensor([0.125, 0.75]))
    torch.testing.assert_close(ref[0, 8, 0], torch.tensor([0.5, 0.5]))


def test_bad_shapes_are_named():
    value, shapes, loc, weights = _inputs(1, 4, 2, 3, 2, [(3, 3), (2, 2)])
    with pytest.raises(ValueError, match="sum to 13"):
        ms_deform_attn(value[:, :-1], shapes, loc, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, shapes, loc, weights[..., :1])
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        MSDeformAttn(16, n_heads=3)


# -------------------- at its edges: float64 end to end, zero queries, double backward
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
