#!/usr/bin/env python
r"""EVA masked image modelling with CLIP teacher features.

Single process:   python tools/pretrain.py --config configs/pretrain/eva_tiny_cpu.py data.root=/data/images
Several GPUs:     torchrun --nproc_per_node 8 tools/pretrain.py --config configs/pretrain/eva_g_clip_l14.py \
                      data.root=/data/merged30m
Several nodes:    torchrun --nnodes 16 --node_rank $RANK --master_addr $ADDR --nproc_per_node 8 tools/pretrain.py ...
Overrides are section.key=value with Python literals (optim.lr=5e-4 train.batch_size=2048 data.root='/x').
Interrupt with Ctrl-C (or SIGTERM): the current step finishes, a checkpoint is written, and rerunning the same
command resumes from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eva_transfer.pretrain import ConfigError, load_config, train  # noqa: E402
from eva_transfer.pretrain.trainer import DistributedStartupError  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a config file under configs/pretrain/")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg, indent=2, default=str))
        return 0
    try:
        train(cfg)
    except (ConfigError, DistributedStartupError) as e:  # a value only the data shows wrong; a missing rank
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
