"""Named functions that configs call (LazyConfig files hold no lambdas): augmentation lists and the lr schedule."""

from __future__ import annotations

from typing import Sequence

import detectron2.data.transforms as T
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

__all__ = ["lsj_train_augmentations", "test_augmentations", "step_schedule"]


def lsj_train_augmentations(image_size: int, min_scale: float, max_scale: float) -> list:
    """Large-scale jitter: horizontal flip, resize to ``[min_scale, max_scale] * image_size``, then a fixed-size
    ``image_size`` crop (smaller images are padded by the model's square padding)."""
    return [
        T.RandomFlip(horizontal=True),
        T.ResizeScale(
            min_scale=min_scale, max_scale=max_scale, target_height=image_size, target_width=image_size
        ),
        T.FixedSizeCrop(crop_size=(image_size, image_size), pad=False),
    ]


def test_augmentations(image_size: int) -> list:
    """Test-time resize: longest edge ``image_size`` (shortest edge ``image_size`` for square-or-wider inputs
    capped by the square padding)."""
    return [T.ResizeShortestEdge(short_edge_length=image_size, max_size=image_size)]


def step_schedule(
    max_iter: int, steps: Sequence[int], warmup_iters: int, warmup_factor: float = 0.001, gamma: float = 0.1
) -> WarmupParamScheduler:
    """Linear warm-up over ``warmup_iters`` iterations, then the lr multiplied by ``gamma`` at each of ``steps``."""
    if any(s >= max_iter for s in steps):
        raise ValueError(f"lr steps {list(steps)} must be below max_iter {max_iter}")
    values = [gamma**i for i in range(len(steps) + 1)]
    return WarmupParamScheduler(
        MultiStepParamScheduler(values=values, milestones=list(steps) + [max_iter]),
        warmup_factor=warmup_factor,
        warmup_length=warmup_iters / max_iter,
    )
