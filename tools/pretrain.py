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

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from eva_transfer.checkpoint import CheckpointError  # noqa: E402
from eva_transfer.pretrain import ConfigError, load_pretrain_config, train  # noqa: E402
from eva_transfer.pretrain.trainer import DistributedStartupError  # noqa: E402
from eva_transfer.runtime import add_run_arguments, configure_cpu_threads  # noqa: E402


def shared_overrides(args) -> list[str]:
    """The shared options as ``section.key=value`` overrides (applied after the positional ones)."""
    extra = list(args.extra_opts)
    if args.output_dir:
        extra.append(f"train.output_dir={args.output_dir!r}")
    if args.resume is not None:
        extra.append(f"train.resume={args.resume!r}")
    if args.device:
        extra.append(f"train.device={args.device!r}")
    return extra


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        "--config-file",
        dest="config",
        required=True,
        help="a config file under configs/pretrain/",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="resume from the output folder's last checkpoint (the default), or from CHECKPOINT",
    )
    add_run_arguments(parser)
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    show_progress_on_stdout()
    try:
        cfg = load_pretrain_config(args.config, list(args.overrides) + shared_overrides(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg, indent=2, default=str))
        return 0
    device = cfg["train"]["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        configure_cpu_threads(args.num_threads, device=device, workers=int(cfg["data"]["workers"]))
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
