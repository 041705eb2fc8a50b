"""eva_transfer_bench.backbone (tools/benchmark_backbone.py): the two sides it times (timm's Eva, timm's EVA-02,
Detectron2's ViTDet) compute the same function with the same weights, and its gradient check sees a difference when
there is one."""

import pytest
import torch

from eva_transfer_bench import backbone


@pytest.mark.parametrize(("case", "size"), [("global", 64), ("det", 64), ("eva02", 56)])
def test_benchmark_pairs_are_equal_and_the_gradient_check_can_fail(case, size):
    ours_fn, ref_fn, ours, ref, flops = backbone.make_pair(
        case, size, "cpu", depth=3
    )  # det: blocks 0, 1 windowed, 2 global; eva02: patch 14, a 4x4 grid
    assert flops == backbone.backbone_flops(case, size, depth=3) > 0
    for m in (ours, ref):
        m.double()
    x = torch.randn(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # training mode (as the fwd+bwd timings): no stochastic depth on either side, same outputs and gradients
    check = backbone.compare_gradients(ours_fn, ref_fn, ours, ref, x)
    assert check["params_compared"] >= 40, check  # every block's weights, under the same names
    assert check["output"] < 1e-8 and check["input_grad"] < 1e-8 and check["param_grad"] < 1e-6, check
    with torch.no_grad():  # one MLP weight of the reference 1% off
        next(p for n, p in ref.named_parameters() if "blocks.1.mlp.fc2.weight" in n).mul_(1.01)
    check = backbone.compare_gradients(ours_fn, ref_fn, ours, ref, x)
    assert check["output"] > 1e-4 and check["param_grad"] > 1e-4, check


def test_eva02_row_is_a_case_of_the_run():
    """The EVA-02 row runs in the same invocation as the others (``--cases`` default), against timm's model of the
    preset's size, with a --quick size on its patch grid."""
    assert "eva02_224" in backbone.CASES and backbone.CASES["eva02_224"][0] == "eva02"
    assert backbone.EVA02_B in backbone.CASES["eva02_224"][3]
    assert set(backbone.QUICK_SIZES) == set(backbone.CASES) and backbone.QUICK_SIZES["eva02_224"] % 14 == 0
