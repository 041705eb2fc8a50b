#!/usr/bin/env python
"""Writes a synthetic shapes dataset (train and val splits) in COCO or LVIS v1 format.

    python tools/make_synthetic_dataset.py --out datasets/shapes --format coco --train 300 --val 50 --size 128 128

prints the annotation files written; register them with ``eva_transfer_projects.detection.data.register_dataset``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_projects.detection.data.synthetic import make_synthetic_dataset  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, help="dataset folder (images in OUT/<split>/, json in OUT/annotations/)"
    )
    parser.add_argument("--format", choices=("coco", "lvis"), default="coco")
    parser.add_argument("--train", type=int, default=300, help="number of training images (0: none)")
    parser.add_argument("--val", type=int, default=50, help="number of validation images (0: none)")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-format", choices=("png", "jpg"), default="png")
    args = parser.parse_args(argv)
    for split, n in (("train", args.train), ("val", args.val)):
        if n > 0:
            path = make_synthetic_dataset(
                args.out,
                split,
                n,
                image_size=args.size,
                fmt=args.format,
                seed=args.seed,
                num_classes=args.num_classes,
                image_format=args.image_format,
            )
            print(f"{split}: {n} images -> {path}")


if __name__ == "__main__":
    main()
