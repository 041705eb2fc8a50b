#!/usr/bin/env python
"""Writes the synthetic segmentation dataset in ADE20K's layout (see projects/segmentation/synthetic.py).

python tools/make_synthetic_ade.py data/synthetic_ade --train 64 --val 16 --size 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_projects.segmentation.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="output folder (images/ and annotations/ are created under it)")
    p.add_argument("--train", type=int, default=64, help="training images")
    p.add_argument("--val", type=int, default=16, help="validation (held-out) images")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = write_synthetic_ade(args.root, args.train, args.val, args.size, args.seed)
    print(
        f"wrote {args.train} training and {args.val} validation images of {args.size}x{args.size} to {root} "
        f"(classes: {', '.join(SYNTHETIC_CLASSES)}; label 0 = unlabelled)"
    )


if __name__ == "__main__":
    main()
