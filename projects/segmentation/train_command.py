"""What ``tools/train_seg.py`` runs: its options, the run's config (file, checked overrides, AMP, resume) and the
training on mmengine's Runner. The tool itself only parses, calls :func:`train` and turns the errors in
:data:`USER_ERRORS` into a one-line message."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer.runtime import add_run_arguments

from .checkpoint_io import latest_intact_checkpoint
from .config_checks import ConfigOverrideError, ConfigValueError, check_train_config, load_seg_config
from .distributed import start_distributed
from .runtime import configure_run

__all__ = ["USER_ERRORS", "build_parser", "parse_args", "make_config", "train", "main"]

#: errors whose message is the whole story for a user (the tool prints them without a traceback)
USER_ERRORS = (ConfigOverrideError, ConfigValueError, FileNotFoundError, CheckpointError)


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of ``tools/train_seg.py`` (``description``: the tool's help text)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
        from .authors_checkpoint import prepare_test_checkpoint

        cfg.load_from = prepare_test_checkpoint(
            cfg.load_from, cfg.model, cfg.get("work_dir"), reinit_classifier=True
        )
    return cfg


def train(args: argparse.Namespace) -> Runner:
    """Checks the config, sets device and threads, joins the process group for ``--launcher pytorch`` and
    trains; returns the runner."""
    cfg = make_config(args)
    check_train_config(cfg)  # before the model and data are built
    configure_run(cfg, args.num_threads, args.device)
    if args.launcher == "pytorch":
        start_distributed(cfg, args.dist_timeout)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def main(argv=None) -> Runner:
    """``tools/train_seg.py`` without its console set-up: parse ``argv`` and train."""
    return train(parse_args(argv))
