"""eva_transfer_bench.published (tools/benchmark_published.py) runs a config in a subprocess and reports time, peak
memory and parameters."""

from eva_transfer_bench import published


def test_tiny_inference_and_training_step_are_reported():
    rows = published.main(
        ["--infer", "tiny_coco", "--train", "tiny_coco", "--train-size", "96", "--threads", "1"]
    )
    assert [r["mode"] for r in rows] == ["infer", "train"]
    for row in rows:
        assert "error" not in row, row
        assert row["seconds"] > 0 and row["params"] > 1e5 and row["peak_gb"] >= 0
    assert rows[1]["size"] == 96


def test_unknown_config_is_reported_as_a_failure():
    rows = published.main(["--infer", "no_such_config"])
    assert "error" in rows[0] and "no_such_config" in rows[0]["error"]


def test_overrides_reach_the_config():
    rows = published.main(
        ["--infer", "tiny_coco", "--threads", "1", "--override", "model.roi_heads.num_classes=3"]
    )
    default = published.main(["--infer", "tiny_coco", "--threads", "1"])
    assert "error" not in rows[0] and "error" not in default[0], (rows, default)
    assert rows[0]["params"] < default[0]["params"]  # fewer classes: smaller box and mask predictors
    typo = published.main(["--infer", "tiny_coco", "--override", "model.roi_heads.num_clases=3"])
    assert "error" in typo[0] and "num_clases" in typo[0]["error"], typo
