"""The training-path attention with decomposed relative position (eva_transfer/attention.py): exact to the math
path in float64 (forward and every gradient), numerically checked by gradcheck, and free of stored n x n maps."""

import pytest
import torch
from reference_models import randomize

import eva_transfer.blocks as blocks
from eva_transfer import attention
from eva_transfer.attention import RelPosAttentionFunction, rel_pos_attention


def _math_attention(q, k, v, rel_h, rel_w, scale):
    """Plain softmax attention from the equations: s_ij = scale q_i.k_j + rel_h[i, h_j] + rel_w[i, w_j]."""
    b, nh, n, _ = q.shape
    gh, gw = rel_h.shape[-1], rel_w.shape[-1]
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, nh, n, gh * gw)
    return torch.softmax(scale * q @ k.transpose(-1, -2) + bias, dim=-1) @ v


def _inputs(b, nh, grid, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    shapes = [(b, nh, n, d)] * 3 + [(b, nh, n, grid[0]), (b, nh, n, grid[1])]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


# windowed-like (many windows, square), global non-square, a single row, tall grid
SHAPES = [(6, 2, (3, 3), 4), (1, 3, (3, 5), 4), (2, 1, (1, 4), 3), (1, 2, (5, 2), 2)]


@pytest.mark.parametrize("b,nh,grid,d", SHAPES)
@pytest.mark.parametrize("max_elements", [1, 40, 1 << 20])  # one row per chunk, a few chunks, one chunk
@pytest.mark.parametrize("fused_forward", [True, False])
def test_matches_math_path_float64(monkeypatch, b, nh, grid, d, max_elements, fused_forward):
    monkeypatch.setattr(attention, "USE_FUSED_FORWARD", fused_forward)
    inputs = _inputs(b, nh, grid, d)
    scale = d**-0.5
    ours = rel_pos_attention(*inputs, scale, max_elements=max_elements)
    ref = _math_attention(*inputs, scale)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=ref.dtype)
    g_ours = torch.autograd.grad(ours, inputs, grad)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    for name, a, e in zip(["q", "k", "v", "rel_h", "rel_w"], g_ours, g_ref):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("b,nh,grid,d", [(3, 2, (2, 2), 3), (1, 2, (2, 3), 3)])  # windows; non-square global
@pytest.mark.parametrize("fused_forward", [True, False])
def test_gradcheck(monkeypatch, b, nh, grid, d, fused_forward):
    monkeypatch.setattr(attention, "USE_FUSED_FORWARD", fused_forward)
    inputs = _inputs(b, nh, grid, d, seed=3)

    def fn(*t):
        return RelPosAttentionFunction.apply(
            *t, 0.7, 2 * b * nh * grid[0] * grid[1]
        )  # two query rows a chunk

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def _randomize(module, seed=1):
    return randomize(module, seed, scale=0.3, dtype=None)


@pytest.mark.parametrize(
    "window,grid",
    [(3, (6, 6)), (3, (5, 7)), (0, (4, 6)), (0, (3, 5))],  # windows without / with padding; global grids
)
def test_block_gradients_equal_math_path(monkeypatch, window, grid):
    """A whole block (window partition with zero padding, or global attention) in float64: output and every
    parameter gradient, including the relative-position tables, equal to autograd through SDPA's math path."""
    block = _randomize(
        blocks.Block(16, 2, 32, window_size=window, use_rel_pos=True, input_size=grid).double(), seed=2
    )
    x = torch.randn(2, grid[0] * grid[1], 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def run():
        block.zero_grad()
        xi = x.clone().requires_grad_()
        out = block(xi, grid)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach(), xi.grad, {n: p.grad.clone() for n, p in block.named_parameters()}

    calls = []
    apply = RelPosAttentionFunction.apply
    monkeypatch.setattr(RelPosAttentionFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    out, gx, grads = run()
    assert calls, "the recomputing attention was not used in training on CPU"
    monkeypatch.setattr(attention, "use_recompute_attention", lambda *t: False)
    n_calls = len(calls)
    out_ref, gx_ref, grads_ref = run()
    assert len(calls) == n_calls
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    assert grads["attn.rel_pos_h"].abs().max() > 0 and grads["attn.rel_pos_w"].abs().max() > 0
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-9, atol=1e-12, msg=name)


def test_inference_keeps_sdpa(monkeypatch):
    calls = []
    apply = RelPosAttentionFunction.apply
    monkeypatch.setattr(RelPosAttentionFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    attn = blocks.Attention(16, 2, use_rel_pos=True, input_size=(4, 4))
    with torch.no_grad():
        attn(torch.randn(1, 16, 16), (4, 4))
    assert not calls
    attn(torch.randn(1, 16, 16), (4, 4))
    assert calls


def test_no_attention_map_is_saved_for_backward():
    """The largest tensor kept for the backward of a global block is linear in the token count, not n x n."""
    grid, heads = (16, 16), 2
    n = grid[0] * grid[1]
    block = _randomize(blocks.Block(16, heads, 32, use_rel_pos=True, input_size=grid))
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(torch.randn(1, n, 16, requires_grad=True), grid).sum().backward()
    assert max(sizes) < heads * n * n // 8, max(sizes)


def test_mismatched_terms_are_rejected():
    q, k, v, rel_h, rel_w = _inputs(1, 2, (3, 4), 4)
    with pytest.raises(ValueError, match="3x3 grid"):
        rel_pos_attention(q, k, v, rel_h, rel_w[..., :3], 0.5)


def test_activation_checkpointing_gives_the_same_gradients():
    """Blocks recomputed by activation checkpointing run the recomputing attention twice; gradients unchanged."""
    from eva_transfer import build_eva_vit

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = _randomize(build_eva_vit("eva_tiny_det", img_size=96, use_act_checkpoint=ckpt), seed=3).train()
        x = torch.randn(1, 3, 80, 112, generator=torch.Generator().manual_seed(7))
        (net(x) ** 2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("rel_pos" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def _rel_terms_reference(q, hw, rel_pos_h, rel_pos_w):
    """``rel_h[i, a] = q_i . R_h[h_i - a + gh - 1]`` and the same along the width, from the equations (tables at
    their native length 2 * side - 1, so no resize)."""
    gh, gw = hw
    b, nh, n, d = q.shape
    hi = torch.arange(gh).repeat_interleave(gw)  # row of query i
    wi = torch.arange(gw).repeat(gh)
    rh = rel_pos_h[(hi[:, None] - torch.arange(gh)[None, :]) + gh - 1]  # (n, gh, d)
    rw = rel_pos_w[(wi[:, None] - torch.arange(gw)[None, :]) + gw - 1]  # (n, gw, d)
    return torch.einsum("bhnd,nad->bhna", q, rh), torch.einsum("bhnd,nad->bhna", q, rw)


@pytest.mark.parametrize("grid", [(5, 5), (3, 7), (6, 2)])  # square, wide, tall
@pytest.mark.parametrize(
    "max_bias", [7 * 2 * 25, 1 << 20]
)  # several query chunks (last one short); one chunk
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("image_groups", [False, True])
def test_sdpa_path_matches_math_float64(monkeypatch, grid, max_bias, grad, image_groups):
    """SDPA's path of ``attention_with_rel_pos`` (inference: one bias buffer reused by every query chunk or, for
    many small grids, by every group of images, and one output tensor; with gradients, as on a GPU: a bias per
    chunk) equals the equations in float64, forward and (with gradients) every input and table gradient."""
    b, nh, d = 3, 2, 4
    n = grid[0] * grid[1]
    monkeypatch.setattr(attention, "MAX_BIAS_ELEMENTS", max_bias)
    # groups of two images (the last one short) or none
    monkeypatch.setattr(attention, "WINDOW_BIAS_ELEMENTS", 2 * nh * n * n if image_groups else 0)
    monkeypatch.setattr(attention, "use_recompute_attention", lambda *t: False)
    g = torch.Generator().manual_seed(11)
    q, k, v = (
        torch.randn(b, nh, n, d, generator=g, dtype=torch.float64).requires_grad_(grad) for _ in range(3)
    )
    tables = [torch.randn(2 * s - 1, d, generator=g, dtype=torch.float64).requires_grad_(grad) for s in grid]
    with torch.set_grad_enabled(grad):
        ours = attention.attention_with_rel_pos(q, k, v, grid, *tables, 0.6)
        ref = _math_attention(q, k, v, *_rel_terms_reference(q, grid, *tables), 0.6)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    if grad:
        w = torch.randn(ref.shape, generator=g, dtype=ref.dtype)
        inputs = [q, k, v, *tables]
        for name, a, e in zip(
            ["q", "k", "v", "rel_pos_h", "rel_pos_w"],
            torch.autograd.grad(ours, inputs, w),
            torch.autograd.grad(ref, inputs, w),
        ):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def _reference_block(block, x, hw):
    """A ViTDet block from the equations, with nothing of the toolkit's code: pre-norm, zero padding to a
    multiple of the window, windows in row-major order, q/v bias (k bias zero), decomposed relative position,
    heads merged, output projection, padding cropped, residual; then the MLP branch. Global when the window is 0."""
    p = dict(block.named_parameters())
    b, n, c = x.shape
    nh = block.attn.num_heads
    d = c // nh
    ws = block.window_size
    y = torch.nn.functional.layer_norm(x, (c,), p["norm1.weight"], p["norm1.bias"], block.norm1.eps)
    h, w = hw
    if ws:
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        y = torch.nn.functional.pad(y.view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
        y = y.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        grid = (ws, ws)
    else:
        grid = hw
    qkv_bias = torch.cat([p["attn.q_bias"], torch.zeros_like(p["attn.q_bias"]), p["attn.v_bias"]])
    qkv = (y @ p["attn.qkv.weight"].t() + qkv_bias).view(y.shape[0], -1, 3, nh, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    rel_h, rel_w = _rel_terms_reference(q, grid, p["attn.rel_pos_h"], p["attn.rel_pos_w"])
    o = _math_attention(q, k, v, rel_h, rel_w, d**-0.5).transpose(1, 2).reshape(y.shape[0], -1, c)
    o = o @ p["attn.proj.weight"].t() + p["attn.proj.bias"]
    if ws:
        o = o.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        o = o[:, :h, :w].reshape(b, n, c)
    x = x + o
    y = torch.nn.functional.layer_norm(x, (c,), p["norm2.weight"], p["norm2.bias"], block.norm2.eps)
    y = torch.nn.functional.gelu(y @ p["mlp.fc1.weight"].t() + p["mlp.fc1.bias"])
    return x + y @ p["mlp.fc2.weight"].t() + p["mlp.fc2.bias"]


@pytest.mark.parametrize(
    "window,grid",
    [(3, (6, 6)), (3, (5, 7)), (4, (2, 9)), (3, (2, 2)), (0, (4, 6)), (0, (3, 5))],
)
@pytest.mark.parametrize("grad", [False, True])
def test_block_equals_reference_float64(window, grid, grad):
    """A whole block (windows without padding, with padding on one or both sides, a grid smaller than one window;
    global blocks on non-square grids) against the block written from the equations: output, and with gradients
    (the recomputing attention) the input gradient and every parameter gradient, in float64."""
    block = _randomize(
        blocks.Block(16, 2, 32, window_size=window, use_rel_pos=True, input_size=grid).double(), seed=6
    )
    x = torch.randn(2, grid[0] * grid[1], 16, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    x.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        ours, ref = block(x, grid), _reference_block(block, x, grid)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    if grad:
        w = torch.linspace(-1, 1, ref.numel(), dtype=ref.dtype).view_as(ref)
        params = [x] + list(block.parameters())
        names = ["input"] + [n for n, _ in block.named_parameters()]
        for name, a, e in zip(
            names, torch.autograd.grad(ours, params, w), torch.autograd.grad(ref, params, w)
        ):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12, msg=name)
