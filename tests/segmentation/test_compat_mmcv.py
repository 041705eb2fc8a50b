"""mmcv-lite workarounds: GPU deformable attention routed to the core op (same numbers as mmcv's PyTorch path),
and a stand-in ``mmcv._ext`` that mmengine can ask about."""

from __future__ import annotations

import pytest
import torch
from mmcv.ops import multi_scale_deform_attn as msda
from mmengine.utils.dl_utils import mmcv_full_available

import eva_transfer_projects.compat as compat
import eva_transfer_projects.segmentation  # noqa: F401  (applies the stand-ins as a user's import does)

needs_lite = pytest.mark.skipif("mmcv._ext" not in compat.APPLIED, reason="a full mmcv build is installed")


@needs_lite
def test_compiled_function_is_replaced_only_in_mmcv_module():
    assert compat.apply_mmcv() is True  # idempotent
    assert msda.MultiScaleDeformableAttnFunction is compat.CoreDeformAttnFunction
    assert "mmcv.ops.MultiScaleDeformableAttnFunction" in compat.APPLIED


@needs_lite
def test_mmengine_sees_no_full_mmcv_without_failing():
    assert mmcv_full_available() is False


@pytest.mark.parametrize("shapes", [[(8, 6), (4, 3), (2, 2)], [(5, 7)], [(9, 9), (3, 5), (1, 2), (2, 1)]])
def test_routed_function_equals_mmcv_pytorch_path(shapes):
    torch.manual_seed(0)
    b, q, heads, d, points = 2, 11, 4, 8, 3
    spatial = torch.tensor(shapes, dtype=torch.long)
    s = int((spatial[:, 0] * spatial[:, 1]).sum())
    value = torch.randn(b, s, heads, d, dtype=torch.float64, requires_grad=True)
    # include points outside [0, 1], which read zeros
    loc = (torch.rand(b, q, heads, len(shapes), points, 2, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    weights = torch.rand(b, q, heads, len(shapes), points, dtype=torch.float64).softmax(-1).requires_grad_()
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])

    out = compat.CoreDeformAttnFunction.apply(value, spatial, starts, loc, weights, 64)
    ref = msda.multi_scale_deformable_attn_pytorch(value, spatial, loc, weights)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (value, loc, weights), grad)
    want = torch.autograd.grad(ref, (value, loc, weights), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-8)
