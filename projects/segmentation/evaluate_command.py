"""What ``tools/test_seg.py`` runs: its options, the test runner (the config's test set only; a released EVA-01
segmentor converted first; test-time augmentation, prediction PNGs and drawings on request) and the check that
the checkpoint sets every weight before anything is scored."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional

from mmengine.config import DictAction
from mmengine.runner import Runner

from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer.runtime import add_run_arguments

from .authors_checkpoint import prepare_test_checkpoint
from .checkpoint_io import unloaded_weights
from .config_checks import ConfigOverrideError, load_seg_config
from .runtime import configure_run

__all__ = ["USER_ERRORS", "build_parser", "parse_args", "build_runner", "check_weights_loaded", "main"]

logger = logging.getLogger("eva_transfer_projects.segmentation")

#: errors whose message is the whole story for a user (the tool prints them without a traceback)
USER_ERRORS = (ConfigOverrideError, FileNotFoundError, CheckpointError)


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of ``tools/test_seg.py`` (``description``: the tool's help text)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", help="a segmentor checkpoint written by tools/train_seg.py")
    p.add_argument("--work-dir", "--output-dir", dest="work_dir", help="where logs go")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip testing")
    p.add_argument("--show-dir", help="write images with the predicted segmentation drawn on them here")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a released checkpoint that needs full unpickling (trusted)",
    )
    p.add_argument(
        "--allow-missing-weights",
        action="store_true",
        help="evaluate even when the checkpoint does not set every weight of the model (those stay random)",
    )
    p.add_argument(
        "--out",
        help="save each prediction here as a PNG of class indices, named after its image (the dataset's label "
        "numbering, as mmseg's --out)",
    )
    p.add_argument("--show", action="store_true", help="display each prediction in a window")
    p.add_argument("--wait-time", type=float, default=2.0, help="seconds each --show window stays up")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--cfg-options", "--opts", nargs="+", action=DictAction, default=None)
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    add_run_arguments(p, output=False, overrides=False)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_runner(args: argparse.Namespace) -> Runner:
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = load_seg_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    # a released EVA-01 segmentor (mmseg 0.x layout) is converted to a copy in the work dir first
    cfg.load_from = prepare_test_checkpoint(
        args.checkpoint, cfg.model, cfg.get("work_dir"), getattr(args, "allow_pickle", False)
    )
    cfg.resume = False
    # testing needs only the test set: the training and validation data may be absent
    for key in (
        "train_dataloader",
        "train_cfg",
        "optim_wrapper",
        "param_scheduler",
        "val_dataloader",
        "val_cfg",
        "val_evaluator",
    ):
        cfg[key] = None
    if args.tta:
        if "tta_pipeline" not in cfg or "tta_model" not in cfg:
            raise KeyError(f"--tta needs tta_pipeline and tta_model in {args.config}")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out:
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
        for evaluator in evaluators:
            evaluator.output_dir = str(args.out)
    if args.show or args.show_dir:
        vis = cfg.default_hooks.get("visualization")
        if vis is None:
            raise KeyError(f"--show/--show-dir need default_hooks.visualization in {args.config}")
        vis.draw = True
        vis.interval = 1
        if args.show:
            vis.show = True
            vis.wait_time = args.wait_time
    if args.show_dir:
        cfg.visualizer.save_dir = args.show_dir
        # visualizers are per-name singletons: a fresh name, so an earlier one (in the same process) is not reused
        cfg.visualizer.name = f"show_dir:{Path(args.show_dir).resolve()}"
    configure_run(cfg, args.num_threads, args.device)
    runner = Runner.from_cfg(cfg)
    check_weights_loaded(
        runner.model, cfg.load_from, args.allow_missing_weights
    )  # the converted copy, if any
    return runner


def check_weights_loaded(model, checkpoint: str, allow_missing: bool = False) -> None:
    """Refuses a checkpoint that does not set every weight of ``model``: the rest would be scored at random."""
    unloaded = unloaded_weights(model, checkpoint)
    if not unloaded:
        return
    total = len(model.state_dict())
    shown = ", ".join(unloaded[:8]) + (", ..." if len(unloaded) > 8 else "")
    message = (
        f"{checkpoint} does not set {len(unloaded)} of the model's {total} weights ({shown}); evaluating would "
        f"score their random initial values"
    )
    if not allow_missing:
        raise CheckpointError(f"{message}. Pass the segmentor checkpoint, or --allow-missing-weights.")
    logger.warning("%s (--allow-missing-weights)", message)


def main(argv=None) -> dict:
    """``tools/test_seg.py``: parse ``argv``, build the runner and test; returns the metrics."""
    return build_runner(parse_args(argv)).test()
