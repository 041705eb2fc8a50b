"""A synthetic segmentation dataset in ADE20K's layout, for tests and CPU smoke runs.

Layout (as ``ADEChallengeData2016``)::

    root/images/training/*.jpg        root/annotations/training/*.png
    root/images/validation/*.jpg      root/annotations/validation/*.png

Labels follow ADE20K's convention: 0 is "other / unlabelled" (ignored once ``reduce_zero_label`` maps it to 255),
class ``k`` of :data:`SYNTHETIC_CLASSES` is stored as ``k + 1``. Each image is a background region with a few
shapes of the other classes, every class with its own colour and texture, plus an unlabelled border, so the
regions are known exactly and a small model can learn them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "synthetic_sample", "write_synthetic_ade"]

SYNTHETIC_CLASSES = ("ground", "box", "disc", "bar", "triangle")
#: colours used both to draw the classes' mean appearance and to colour predictions
SYNTHETIC_PALETTE = ((120, 120, 80), (220, 60, 60), (60, 200, 80), (70, 90, 230), (230, 200, 40))
_TEXTURE_PERIOD = (0, 0, 0, 4, 0)  # bars are striped, so colour alone is not the only cue


def synthetic_sample(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(size, size, 3) uint8`` and its ADE-style label ``(size, size) uint8`` (0 = unlabelled)."""
    label = np.ones((size, size), np.uint8)  # class 0 ("ground") stored as 1
    yy, xx = np.mgrid[0:size, 0:size]
    n_shapes = int(rng.integers(2, 5))
    for _ in range(n_shapes):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        s = int(rng.integers(size // 5, size // 2))
        cy, cx = (int(v) for v in rng.integers(s // 2, size - s // 2, size=2))
        if cls == 1:  # box
            region = (abs(yy - cy) <= s // 2) & (abs(xx - cx) <= s // 2)
        elif cls == 2:  # disc
            region = (yy - cy) ** 2 + (xx - cx) ** 2 <= (s // 2) ** 2
        elif cls == 3:  # bar: long and thin, horizontal or vertical
            a, b = (s // 5 + 1, s) if rng.random() < 0.5 else (s, s // 5 + 1)
            region = (abs(yy - cy) <= a) & (abs(xx - cx) <= b)
        else:  # triangle pointing up
            region = (yy >= cy - s // 2) & (yy <= cy + s // 2) & (abs(xx - cx) <= (yy - (cy - s // 2)) // 2)
        label[region] = cls + 1
    border = max(1, size // 32)
    label[:border] = 0
    label[-border:] = 0

    img = np.zeros((size, size, 3), np.float32)
    shade = rng.uniform(-25, 25, size=(len(SYNTHETIC_CLASSES), 3))
    for k, colour in enumerate(SYNTHETIC_PALETTE):
        m = label == k + 1
        value = np.asarray(colour, np.float32) + shade[k]
        if _TEXTURE_PERIOD[k]:
            value = value[None] * (1.0 - 0.35 * ((yy[m] + xx[m]) // _TEXTURE_PERIOD[k] % 2))[:, None]
        img[m] = value
    img[label == 0] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


def write_synthetic_ade(
    root: str | Path, num_train: int = 64, num_val: int = 16, size: int = 64, seed: int = 0
) -> Path:
    """Writes the dataset under ``root`` (ADE20K layout, see module doc); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("training", num_train), ("validation", num_val)):
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = synthetic_sample(rng, size)
            stem = f"synthetic_{split}_{i:05d}"
            Image.fromarray(img).save(img_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(ann_dir / f"{stem}.png")
    return root
