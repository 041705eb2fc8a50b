"""Pre-training data: image lists, the published augmentation, masks, and a resumable distributed order.

Every random choice of a sample (crop, flip, mask) comes from a NumPy generator seeded by ``(seed, epoch,
index)``, and the order of an epoch from one seeded by ``(seed, epoch)``. A sample is therefore the same whatever
the number of processes or loader workers, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .masking import BlockMaskGenerator

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "list_images",
    "random_resized_crop_box",
    "MIMDataset",
    "GlobalBatchSampler",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def list_images(root: Optional[str] = None, list_file: Optional[str] = None) -> list[str]:
    """Image paths from a folder (searched recursively, sorted) or a list file.

    A list file is a COCO-style JSON (``images[].file_name``) or a text file with one image per line (ImageNet
    style ``path [label]``; the label is ignored). Relative paths are taken relative to ``root`` (or the list
    file's folder). Raises ValueError when no image is found, naming where it looked.
    """
    if list_file is not None:
        lf = Path(list_file)
        if not lf.is_file():
            raise FileNotFoundError(f"data.list_file not found: {lf}")
        base = Path(root) if root is not None else lf.parent
        if lf.suffix == ".json":
            with open(lf) as f:
                meta = json.load(f)
            if not isinstance(meta, dict) or not isinstance(meta.get("images"), list):
                raise ValueError(
                    f"{lf}: a COCO-style list needs an 'images' array of {{'file_name': ...}} entries"
                )
            names = []
            for i, im in enumerate(meta["images"]):
                if not isinstance(im, dict) or "file_name" not in im:
                    raise ValueError(f"{lf}: images[{i}] has no 'file_name'")
                names.append(im["file_name"])
        else:
            with open(lf) as f:
                names = [line.split()[0] for line in f if line.strip() and not line.lstrip().startswith("#")]
        paths = [str(p if os.path.isabs(p) else base / p) for p in names]
        if not paths:
            raise ValueError(f"data.list_file {lf} lists no images")
        return paths
    if root is None:
        raise ValueError("set data.root (an image folder) or data.list_file")
    rootp = Path(root)
    if not rootp.is_dir():
        raise FileNotFoundError(f"data.root is not a folder: {rootp}")
    paths = sorted(str(p) for p in rootp.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ValueError(
            f"data.root {rootp} contains no images (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """A crop ``(left, top, w, h)`` covering a fraction in ``scale`` of the image with aspect ratio (w/h)
    log-uniform in ``ratio``; after ``tries`` misses, the largest centred crop within ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class MIMDataset(Dataset):
    """Images with the pre-training augmentation and a block mask.

    Each item is a dict: ``image`` ``(3, S, S)`` float in ``[0, 1]`` (random resized crop + horizontal flip;
    teacher and student normalise this same crop), ``mask`` ``(S/p * S/p,)`` bool, ``index``, and ``skipped``
    (0). An unreadable file gives ``image=None``, ``skipped=1`` and its ``path`` (logged with the reason);
    :func:`collate` leaves it out of the batch, so no other image stands in for it (none is seen twice).

    Args:
        paths: image files.
        img_size: crop side S.
        mask_generator: a :class:`BlockMaskGenerator` for the ``S/p x S/p`` grid.
        scale, ratio: random resized crop ranges; hflip: flip probability.
        seed: base seed; ``set_epoch`` selects the epoch's draws.
        max_skip: kept for compatibility; unused (unreadable files are left out of their batch).
    """

    def __init__(
        self,
        paths: Sequence[str],
        img_size: int,
        mask_generator: BlockMaskGenerator,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        interpolation: str = "bicubic",
        seed: int = 0,
        max_skip: int = 100,
    ):
        if not paths:
            raise ValueError("the pre-training dataset is empty")
        self.paths = list(paths)
        self.img_size = img_size
        self.mask_generator = mask_generator
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip = hflip
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
        if interpolation not in resample:
            raise ValueError(f"data.interpolation must be one of {sorted(resample)}, got {interpolation!r}")
        self.resample = resample[interpolation]
        self.seed = seed
        self.epoch = 0
        self.max_skip = max_skip

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, path: str) -> Image.Image:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            img = self._load(path)
        except Exception as e:  # PIL raises many types for broken files
            # no stand-in: a neighbour in its place would be seen twice in the epoch; the batch is one smaller
            logger.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            return {"image": None, "mask": None, "index": index, "skipped": 1, "path": path}
        rng = np.random.default_rng([self.seed, self.epoch, index])
        left, top, w, h = random_resized_crop_box(img.width, img.height, rng, self.scale, self.ratio)
        img = img.resize((self.img_size, self.img_size), self.resample, box=(left, top, left + w, top + h))
        if rng.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        mask = torch.from_numpy(self.mask_generator(rng).reshape(-1))
        return {"image": image, "mask": mask, "index": index, "skipped": 0}


def collate(items: list[dict]) -> dict[str, Tensor]:
    """Stacks the readable items; ``skipped`` counts the unreadable ones left out (one per file). A batch with
    no readable image is an error naming its files."""
    good = [it for it in items if it["image"] is not None]
    if not good:
        names = ", ".join(it["path"] for it in items[:5]) + (" ..." if len(items) > 5 else "")
        raise RuntimeError(f"all {len(items)} images of a batch are unreadable ({names}); check the data")
    return {
        "image": torch.stack([it["image"] for it in good]),
        "mask": torch.stack([it["mask"] for it in good]),
        "index": torch.tensor([it["index"] for it in good]),
        "skipped": torch.tensor(len(items) - len(good)),
    }


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch of a seeded per-epoch permutation (last partial batch dropped).

    Global batch ``b`` of epoch ``e`` is ``perm_e[b*G:(b+1)*G]`` and rank ``r`` takes its ``r``-th slice of
    ``G / world`` indexes, so the global batch is the same for any number of processes. ``start_step`` skips the
    batches already trained (resume).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} images are fewer than one global batch of {global_batch}")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.local_batch
            yield perm[start : start + self.local_batch].tolist()
