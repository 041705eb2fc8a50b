"""eva_transfer_bench.backbone (tools/benchmark_backbone.py): the two sides it times compute the same function with
the same weights, and its gradient check sees a difference when there is one."""

import pytest
import torch

from eva_transfer_bench import backbone


@pytest.mark.parametrize("case", ["global", "det"])
def test_benchmark_pairs_are_equal_and_the_gradient_check_can_fail(case):
    ours_fn, ref_fn, ours, ref, flops = backbone.make_pair(
        case, 64, "cpu", depth=3
    )  # blocks 0, 1 windowed, 2 global
    assert flops == backbone.backbone_flops(case, 64, depth=3) > 0
    for m in (ours, ref):
        m.double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # training mode (as the fwd+bwd timings): no stochastic depth on either side, same outputs and gradients
    check = backbone.compare_gradients(ours_fn, ref_fn, ours, ref, x)
    assert check["params_compared"] >= 40, check  # every block's weights, under the same names
    assert check["output"] < 1e-8 and check["input_grad"] < 1e-8 and check["param_grad"] < 1e-6, check
    with torch.no_grad():  # one MLP weight of the reference 1% off
        next(p for n, p in ref.named_parameters() if "blocks.1.mlp.fc1.weight" in n).mul_(1.01)
    check = backbone.compare_gradients(ours_fn, ref_fn, ours, ref, x)
    assert check["output"] > 1e-4 and check["param_grad"] > 1e-4, check
