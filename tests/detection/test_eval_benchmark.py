"""eva_transfer_bench.detection_eval (tools/benchmark_eval.py): the metrics it reports are the official tools' own
numbers on the same files, and its times and speed-up are the best runs it measured."""

import copy
import json
import logging

import pytest

from eva_transfer_projects import compat

compat.apply()

from lvis import LVIS, LVISEval, LVISResults  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from eva_transfer_bench import detection_eval, measure  # noqa: E402
from eva_transfer_bench.synthetic_predictions import make_predictions  # noqa: E402

logging.getLogger("lvis").setLevel(logging.WARNING)
TOL = 1e-6
SMALL = dict(num_images=12, dets_per_image=20, num_classes=6, image_size=(64, 64), iou_types=("bbox",))


def _official(style, json_file, results):
    """The official tool's metrics on the ground-truth file and results, run here, apart from the benchmark."""
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in copy.deepcopy(results)]
    if style == "coco":
        gt = COCO(str(json_file))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "APs": float(ev.stats[3])}
    gt = LVIS(str(json_file))
    ev = LVISEval(gt, LVISResults(gt, results, max_dets=300), "bbox")
    ev.run()
    return {k: float(v) for k, v in ev.get_results().items() if k in ("AP", "AP50", "APr", "APc", "APf")}


def test_reported_metrics_are_the_official_tools_numbers(tmp_path):
    report = detection_eval.run_eval_benchmark(**SMALL, workdir=tmp_path, verbose=False)
    assert report["setup"]["num_images"] == 12
    for style in ("lvis", "coco"):
        row = report[f"{style}/bbox"]
        json_file = tmp_path / style / "annotations" / f"{style}_val.json"
        gt = json.loads(json_file.read_text())
        assert len(gt["images"]) == 12
        official = _official(style, json_file, make_predictions(gt, dets_per_image=20, seed=1))
        for key, value in official.items():
            assert row["metrics"][key] == pytest.approx(value, abs=TOL, nan_ok=True), (style, key)
        assert row["max_abs_diff"] < TOL
        # the synthetic detections overlap the ground truth: a working evaluator finds some AP, never all
        assert 0.05 < row["metrics"]["AP"] < 1.0, row["metrics"]["AP"]


def test_reported_times_are_the_best_runs_and_the_speedup_their_ratio(tmp_path, monkeypatch):
    """A fake clock that only the evaluators move: each reference run takes 3 s then 2 s, each fast run 0.5 s then
    0.25 s, so the report must say 2 s, 0.25 s and a speed-up of 8 (reference / fast)."""
    now = [0.0]
    durations = {"reference": [3.0, 2.0], "fast": [0.5, 0.25]}

    def taking(kind, fn):
        def run(*args, **kwargs):
            out = fn(*args, **kwargs)
            now[0] += durations[kind].pop(0)
            return out

        return run

    monkeypatch.setattr(measure, "clock", lambda: now[0])
    monkeypatch.setattr(detection_eval, "_pycocotools", taking("reference", detection_eval._pycocotools))
    monkeypatch.setattr(detection_eval, "evaluate_results", taking("fast", detection_eval.evaluate_results))
    report = detection_eval.run_eval_benchmark(
        **SMALL, styles=("coco",), workdir=tmp_path, repeat=2, verbose=False
    )
    row = report["coco/bbox"]
    assert durations == {"reference": [], "fast": []}  # two runs of each
    assert (row["reference_s"], row["fast_s"]) == (2.0, 0.25)
    assert row["speedup"] == 8.0
    assert row["max_abs_diff"] < TOL  # the runs compared are real ones
