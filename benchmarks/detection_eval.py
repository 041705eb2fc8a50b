"""Evaluation speed: the fast evaluator against pycocotools and lvis-api on the same synthetic results.

    python tools/benchmark_eval.py [--num-images 1000] [--dets-per-image 300] [--repeat 2]
    python -m eva_transfer_bench.detection_eval [--num-images 1000] [--dets-per-image 300]   # the same

Each evaluation runs end to end (read the ground-truth json, load the results, evaluate, accumulate, summarise),
in this process, one after the other; the table gives seconds, the speed-up and the largest difference between
the two tools' metrics (identical numbers print 0).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
from functools import partial
from pathlib import Path

from eva_transfer_projects import compat

compat.apply_lvis_numpy()

from eva_transfer_projects.detection.data import make_synthetic_dataset  # noqa: E402
from eva_transfer_projects.detection.evaluation.fast_eval import (  # noqa: E402
    COCO_METRICS,
    LVIS_METRICS,
    evaluate_results,
)

from .measure import best_time  # noqa: E402
from .synthetic_predictions import make_predictions  # noqa: E402

logger = logging.getLogger(__name__)


def _for_iou_type(results, iou_type):
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    return [{k: v for k, v in r.items() if k != drop} for r in results]


def _pycocotools(json_file, results, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO(str(json_file))
    ev = COCOeval(coco_gt, coco_gt.loadRes(_for_iou_type(results, iou_type)), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return dict(zip(COCO_METRICS, map(float, ev.stats[:6])))


def _lvis_api(json_file, results, iou_type, max_dets=300):
    from lvis import LVIS, LVISEval, LVISResults

    lvis_gt = LVIS(str(json_file))
    ev = LVISEval(
        lvis_gt, LVISResults(lvis_gt, _for_iou_type(results, iou_type), max_dets=max_dets), iou_type
    )
    ev.run()
    return {k: float(v) for k, v in ev.get_results().items() if k in LVIS_METRICS}


def run_eval_benchmark(
    num_images: int = 1000,
    dets_per_image: int = 300,
    num_classes: int = 40,
    image_size: tuple[int, int] = (160, 160),
    iou_types: tuple[str, ...] = ("bbox", "segm"),
    styles: tuple[str, ...] = ("lvis", "coco"),
    workdir: str | Path | None = None,
    seed: int = 0,
    repeat: int = 1,
    verbose: bool = True,
) -> dict:
    """Times both evaluators per (style, iou_type); returns {"lvis/bbox": {"fast_s", "reference_s", "speedup",
    "max_abs_diff", "metrics"}, ...} plus "setup" (sizes)."""
    for name in ("lvis", "pycocotools", "faster_coco_eval"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="eval_bench_")
        workdir = tmp.name
    workdir = Path(workdir)
    report: dict = {
        "setup": {
            "num_images": num_images,
            "dets_per_image": dets_per_image,
            "num_classes": num_classes,
            "image_size": list(image_size),
        }
    }
    try:
        for style in styles:
            json_file = make_synthetic_dataset(
                workdir / style,
                "val",
                num_images,
                image_size=image_size,
                fmt=style,
                num_classes=num_classes,
                seed=seed,
                objects_per_image=(3, 8),
            )
            gt = json.loads(Path(json_file).read_text())
            results = make_predictions(gt, dets_per_image=dets_per_image, seed=seed + 1)
            for iou_type in iou_types:
                reference = _lvis_api if style == "lvis" else _pycocotools
                ref_s = float("inf")
                for _ in range(repeat):  # the reference tools write into their inputs: a fresh copy per run
                    ref, seconds = best_time(partial(reference, json_file, copy.deepcopy(results), iou_type))
                    ref_s = min(ref_s, seconds)
                fast, fast_s = best_time(
                    partial(evaluate_results, json_file, results, iou_type, style), repeat
                )
                diff = max(abs(fast[k] - ref[k]) for k in ref)
                key = f"{style}/{iou_type}"
                report[key] = {
                    "fast_s": fast_s,
                    "reference_s": ref_s,
                    "speedup": ref_s / fast_s,
                    "max_abs_diff": diff,
                    "metrics": fast,
                }
                if verbose:
                    name = "lvis-api" if style == "lvis" else "pycocotools"
                    logger.info(
                        "%-12s %d images x %d dets: fast %7.2f s, %s %7.2f s, speed-up %5.1fx, "
                        "max |diff| %.1e, AP %.2f",
                        key,
                        num_images,
                        dets_per_image,
                        fast_s,
                        name,
                        ref_s,
                        ref_s / fast_s,
                        diff,
                        100 * fast["AP"],
                    )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--dets-per-image", type=int, default=300)
    parser.add_argument("--num-classes", type=int, default=40)
    parser.add_argument("--size", type=int, nargs=2, default=(160, 160), metavar=("H", "W"))
    parser.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    parser.add_argument("--styles", nargs="+", default=["lvis", "coco"], choices=["lvis", "coco"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per evaluator; the best time counts")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", force=True
    )  # lvis-api configures the root logger on import
    report = run_eval_benchmark(
        args.num_images,
        args.dets_per_image,
        args.num_classes,
        tuple(args.size),
        tuple(args.iou_types),
        tuple(args.styles),
        repeat=args.repeat,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
