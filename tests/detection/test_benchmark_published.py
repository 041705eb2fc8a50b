"""tools/benchmark_published.py runs a config in a subprocess and reports time, peak memory and parameters."""

import importlib.util
from pathlib import Path


def _module():
    path = Path(__file__).resolve().parents[2] / "tools" / "benchmark_published.py"
    spec = importlib.util.spec_from_file_location("benchmark_published", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_inference_and_training_step_are_reported():
    rows = _module().main(
        ["--infer", "tiny_coco", "--train", "tiny_coco", "--train-size", "96", "--threads", "1"]
    )
    assert [r["mode"] for r in rows] == ["infer", "train"]
    for row in rows:
        assert "error" not in row, row
        assert row["seconds"] > 0 and row["params"] > 1e5 and row["peak_gb"] >= 0
    assert rows[1]["size"] == 96


def test_unknown_config_is_reported_as_a_failure():
    rows = _module().main(["--infer", "no_such_config"])
    assert "error" in rows[0] and "no_such_config" in rows[0]["error"]
