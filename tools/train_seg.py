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

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import eva_transfer_projects.segmentation  # noqa: E402,F401  (registers the plug-in before the config is built)
from eva_transfer.checkpoint import CheckpointError  # noqa: E402
from eva_transfer.runtime import add_run_arguments  # noqa: E402
from eva_transfer_projects.segmentation.checkpoint_io import latest_intact_checkpoint  # noqa: E402
from eva_transfer_projects.segmentation.cli import (  # noqa: E402
    ConfigOverrideError,
    ConfigValueError,
    check_train_config,
    load_seg_config,
    start_distributed,
)
from eva_transfer_projects.segmentation.runtime import configure_run  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file")
    p.add_argument(
        "--work-dir",
        "--output-dir",
        dest="work_dir",
        help="where logs and checkpoints go (default: work_dirs/<config name>)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="resume training: from work_dir's last checkpoint, or from CHECKPOINT",
    )
    p.add_argument("--amp", action="store_true", help="mixed-precision training (AmpOptimWrapper)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        help="--launcher pytorch: seconds to wait for every process to start (and for each collective operation)",
    )
    p.add_argument(
        "--cfg-options",
        "--opts",
        nargs="+",
        action=DictAction,
        default=None,
        help="override config keys, e.g. train_cfg.max_iters=1000 optim_wrapper.optimizer.lr=1e-4",
    )
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    add_run_arguments(p, output=False, overrides=False)
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    """The run's config: the file, checked overrides, work dir, launcher, AMP and resume settings."""
    cfg = load_seg_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    # a resumed run with a longer max_iters extends the lr schedule instead of running on at its final value
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(h.get("type") == "ScheduleFollowsRunHook" for h in hooks):
        cfg.custom_hooks = hooks + [dict(type="ScheduleFollowsRunHook")]
    if args.resume == "auto":
        cfg.resume = True
        # the newest intact checkpoint (a damaged newer one is skipped with a warning); None: start afresh
        cfg.load_from = latest_intact_checkpoint(cfg.work_dir)
    elif args.resume:
        cfg.resume = True
        cfg.load_from = args.resume
    if cfg.get("load_from") and not cfg.get("resume") and Path(cfg.load_from).is_file():
        # a released EVA-01 segmentor (mmseg 0.x layout) is converted first; its classifier is dropped when the
        # config has another class count (COCO-Stuff -> ADE20K)
        from eva_transfer_projects.segmentation.authors_checkpoint import prepare_test_checkpoint

        cfg.load_from = prepare_test_checkpoint(
            cfg.load_from, cfg.model, cfg.get("work_dir"), reinit_classifier=True
        )
    return cfg


def main(argv=None) -> Runner:
    args = parse_args(argv)
    cfg = make_config(args)
    check_train_config(cfg)  # before the model and data are built
    configure_run(cfg, args.num_threads, args.device)
    if args.launcher == "pytorch":
        logging.basicConfig(
            level=logging.INFO, format="%(message)s", stream=sys.stdout
        )  # the rendezvous wait is logged
        start_distributed(cfg, args.dist_timeout)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


if __name__ == "__main__":
    try:
        main()
    except (ConfigOverrideError, ConfigValueError, FileNotFoundError, CheckpointError) as e:
        sys.exit(f"error: {e}")
