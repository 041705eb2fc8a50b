#!/usr/bin/env python
r"""EVA masked image modelling with CLIP teacher features.

Single process:   python tools/pretrain.py --config configs/pretrain/eva_tiny_cpu.py data.root=/data/images
Several GPUs:     torchrun --nproc_per_node 8 tools/pretrain.py --config configs/pretrain/eva_g_clip_l14.py \
                      data.root=/data/merged30m
Several nodes:    torchrun --nnodes 16 --node_rank $RANK --master_addr $ADDR --nproc_per_node 8 tools/pretrain.py ...
Overrides are section.key=value with Python literals (optim.lr=5e-4 train.batch_size=2048 data.root='/x').
The options shared by all tools: --config-file (= --config), --output-dir/--work-dir (train.output_dir),
--cfg-options/--opts (more overrides), --resume [CHECKPOINT] (train.resume; the default already resumes from the
output folder), --device (train.device) and --num-threads (CPU threads; default: the cores shared among the
process and its data-loader workers).
Interrupt with Ctrl-C (or SIGTERM): the current step finishes, a checkpoint is written, and rerunning the same
command resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eva_transfer.checkpoint_io import CheckpointError  # noqa: E402
from eva_transfer.pretrain import ConfigError, train  # noqa: E402
from eva_transfer.pretrain.command import build_parser, config_from_args, configure_threads  # noqa: E402
from eva_transfer.pretrain.trainer import DistributedStartupError  # noqa: E402


def show_progress_on_stdout() -> None:
    """The trainer logs its progress; this tool prints it on stdout as ``[pretrain] ...`` lines. Warnings and
    other modules' records stay on stderr with the rest of the log."""
    name = "eva_transfer.pretrain.trainer"

    def is_progress(record: logging.LogRecord) -> bool:
        return record.name == name and record.levelno < logging.WARNING

    trainer_log = logging.getLogger(name)
    if any(getattr(h, "pretrain_progress", False) for h in trainer_log.handlers):
        return  # already set up (main() called again in this process)
    progress = logging.StreamHandler(sys.stdout)
    progress.pretrain_progress = True
    progress.setFormatter(logging.Formatter("[pretrain] %(message)s"))
    progress.addFilter(is_progress)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not is_progress(record))
    trainer_log.addHandler(progress)


def main(argv=None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_progress_on_stdout()
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg, indent=2, default=str))
        return 0
    try:
        configure_threads(cfg, args.num_threads)
    except ValueError as e:  # a bad thread count
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    # a value only the data shows wrong; a missing rank; a --resume file that is missing or damaged
    except (ConfigError, DistributedStartupError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
