"""eva_transfer_bench.amp_heads (the AMP head-dtype check run on CUDA with float16) on a CPU with bfloat16."""

from eva_transfer_bench import amp_heads

from .conftest import TINY_COCO


def test_amp_heads_reports_float32_heads_and_a_bfloat16_backbone(capsys):
    assert amp_heads.main(["--device", "cpu", "--config", TINY_COCO, "--size", "128"]) == 0
    out = capsys.readouterr().out
    assert "OK: with fp32_heads=True the backbone runs in bfloat16, the RPN and RoI heads in float32" in out
    assert "rpn conv       bfloat16" in out  # fp32_heads=False: the heads under autocast
