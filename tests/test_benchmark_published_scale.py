"""eva_transfer_bench.published_scale: one segmentation / pre-training inference in a fresh process, with time, peak
memory and sizes reported (tiny presets here; the EVA-g runs are in docs/records/performance.md)."""

import math

from eva_transfer_bench.published_scale import main


def test_tiny_segmentation_and_pretraining_runs_are_reported(capsys):
    argv = ["--seg", "tiny_seg", "--seg-image", "64", "80", "--pretrain", "tiny_pretrain", "--backward"]
    rows = main(argv + ["--threads", "1"])
    assert [r["kind"] for r in rows] == ["seg", "pretrain"]
    for row in rows:
        assert "error" not in row, row
        assert row["seconds"] > 0 and row["peak_gb"] >= 0 and row["params"] > 1e5
    seg, pre = rows
    assert seg["output_shape"] == [64, 80]  # whole-image inference returns the input's size
    assert pre["size"] == 128 and pre["masked"] > 0 and math.isfinite(pre["loss"])
    assert pre["backward"] is True and pre["teacher_params"] > 1e4
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("tiny_seg whole inference") and "peak memory" in printed[0]
    assert printed[1].startswith("tiny_pretrain forward + backward at 128 px")


def test_unknown_config_is_a_failure_row_naming_it(capsys):
    rows = main(["--pretrain", "no_such_config", "--seg", "nor_this_one"])
    assert [("error" in r) for r in rows] == [True, True]
    assert "nor_this_one" in rows[0]["error"] and "no_such_config" in rows[1]["error"]
    assert "failed" in capsys.readouterr().out
