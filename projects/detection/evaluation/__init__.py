"""COCO / LVIS evaluation through faster-coco-eval, equal to pycocotools / lvis-api, plus LVIS boundary AP."""

from eva_transfer_projects import compat

compat.apply_detectron2()

from .evaluators import COCOEvaluator, LVISEvaluator, build_evaluator  # noqa: E402
from .fast_eval import COCO_METRICS, LVIS_METRICS, evaluate_results  # noqa: E402

__all__ = [
    "COCOEvaluator",
    "LVISEvaluator",
    "build_evaluator",
    "COCO_METRICS",
    "LVIS_METRICS",
    "evaluate_results",
]
