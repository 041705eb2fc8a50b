"""The augmentation lists of the detection configs (LazyConfig files call named functions, not lambdas)."""

from __future__ import annotations

import detectron2.data.transforms as T

__all__ = ["lsj_train_augmentations", "lsj_test_augmentations"]


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


def lsj_test_augmentations(image_size: int) -> list:
    """Test-time resize of the LSJ recipes: longest edge ``image_size`` (shortest edge ``image_size`` for
    square-or-wider inputs capped by the square padding)."""
    return [T.ResizeShortestEdge(short_edge_length=image_size, max_size=image_size)]
