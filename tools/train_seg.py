#!/usr/bin/env python
"""Trains a segmentation config on mmengine's Runner.

    python tools/train_seg.py configs/segmentation/eva_tiny_mask2former_synthetic.py \
        --cfg-options train_dataloader.dataset.data_root=data/synthetic_ade
    python tools/train_seg.py CONFIG --resume                 # continue from work_dir's last checkpoint
    python tools/train_seg.py CONFIG --output-dir out --opts train_cfg.max_iters=40 --device cpu --num-threads 1
    torchrun --nproc-per-node 8 tools/train_seg.py CONFIG --launcher pytorch

Overrides in --cfg-options must name existing keys (a typo is an error); add a new key with a leading '+'.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eva_transfer_projects.compat import silence_known_warnings  # noqa: E402

silence_known_warnings()  # this tool's choice, before the plug-in imports code that warns at import

from eva_transfer_projects.segmentation.train_command import USER_ERRORS, build_parser, train  # noqa: E402

if __name__ == "__main__":
    args = build_parser(__doc__).parse_args()
    if args.launcher == "pytorch":
        logging.basicConfig(
            level=logging.INFO, format="%(message)s", stream=sys.stdout
        )  # the rendezvous wait
    try:
        train(args)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
