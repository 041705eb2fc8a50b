"""Named functions that configs call (LazyConfig files hold no lambdas): augmentation lists and the lr schedule."""

from __future__ import annotations

from typing import Sequence

import detectron2.data.transforms as T
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

__all__ = ["lsj_train_augmentations", "test_augmentations", "step_schedule", "build_evaluator"]


def lsj_train_augmentations(image_size: int, min_scale: float, max_scale: float) -> list:
    """Large-scale jitter: horizontal flip, resize to ``[min_scale, max_scale] * image_size``, then a fixed-size
    ``image_size`` crop (smaller images are padded by the model's square padding)."""
    return [
        T.RandomFlip(horizontal=True),
        T.ResizeScale(min_scale=min_scale, max_scale=max_scale, target_height=image_size, target_width=image_size),
        T.FixedSizeCrop(crop_size=(image_size, image_size), pad=False),
    ]


def test_augmentations(image_size: int) -> list:
    """Test-time resize: longest edge ``image_size`` (shortest edge ``image_size`` for square-or-wider inputs
    capped by the square padding)."""
    return [T.ResizeShortestEdge(short_edge_length=image_size, max_size=image_size)]


def step_schedule(max_iter: int, steps: Sequence[int], warmup_iters: int, warmup_factor: float = 0.001,
                  gamma: float = 0.1) -> WarmupParamScheduler:
    """Linear warm-up over ``warmup_iters`` iterations, then the lr multiplied by ``gamma`` at each of ``steps``."""
    if any(s >= max_iter for s in steps):
        raise ValueError(f"lr steps {list(steps)} must be below max_iter {max_iter}")
    values = [gamma**i for i in range(len(steps) + 1)]
    return WarmupParamScheduler(
        MultiStepParamScheduler(values=values, milestones=list(steps) + [max_iter]),
        warmup_factor=warmup_factor,
        warmup_length=warmup_iters / max_iter,
    )


def build_evaluator(dataset_name: str, output_dir: str):
    """The evaluator for a registered dataset: the plug-in's fast COCO/LVIS evaluators when installed,
    Detectron2's otherwise (chosen by the dataset's ``evaluator_type``)."""
    try:
        from projects.detection.evaluation import build_evaluator as build_fast
    except ImportError:
        build_fast = None
    if build_fast is not None:
        return build_fast(dataset_name, output_dir)
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOEvaluator, LVISEvaluator

    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    cls = LVISEvaluator if kind == "lvis" else COCOEvaluator
    return cls(dataset_name, output_dir=output_dir)
