"""What ``tools/train_net.py`` runs: its options (Detectron2's plus the ones every tool of this project spells the
same way), the checks made before any process starts, and the training or evaluation each process runs. The tool
itself parses, calls, prints the wait for a distributed start and turns the errors into one-line messages."""

from __future__ import annotations

import argparse
import datetime
import os

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from omegaconf import OmegaConf

from eva_transfer.runtime import add_run_arguments, configure_cpu_threads

from .config_checks import ConfigValueError, check_config, check_launch_args
from .data.config_datasets import prepare_config_datasets
from .engine import do_eval_only, do_train, load_det_config, setup_datasets, setup_run

__all__ = [
    "build_parser",
    "check_before_launch",
    "configure_threads",
    "launch_processes",
    "main",
    "parse_args",
    "prepare_datasets",
    "world_size",
]


def build_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` plus ``--dist-timeout``, ``--allow-missing-weights`` and the
    shared options (:func:`eva_transfer.runtime.add_run_arguments`)."""
    p = default_argument_parser()
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for every process of a distributed run to start (and for each collective "
        "operation; Detectron2's 30 minutes by default)",
    )
    p.add_argument(
        "--allow-missing-weights",
        action="store_true",
        help="with --eval-only: evaluate even when the checkpoint does not set every weight (random heads)",
    )
    add_run_arguments(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Detectron2's arguments plus the shared ones; these are folded into ``args.opts``."""
    args = build_parser().parse_args(argv)
    args.opts = list(args.opts or []) + list(args.extra_opts)
    if args.output_dir:
        args.opts.append(f"train.output_dir={args.output_dir}")
    if args.device:
        args.opts.append(f"train.device={args.device}")
    return args


def configure_threads(cfg, args) -> int:
    """This process's CPU threads: one share of the cores per process and data-loader worker."""
    loader = cfg.dataloader.test if args.eval_only else cfg.dataloader.train
    device = str(cfg.train.get("device", "cpu"))
    processes = max(1, int(args.num_gpus)) if not device.startswith("cuda") else 1
    return configure_cpu_threads(
        args.num_threads, device=device, processes=processes, workers=int(loader.get("num_workers", 0) or 0)
    )


def main(args):
    """One process of the run: config, logging and seeds, threads, datasets, then training or evaluation."""
    cfg = load_det_config(args.config_file, args.opts)
    setup_run(cfg, args)
    configure_threads(cfg, args)
    setup_datasets(cfg)
    if args.eval_only:
        return do_eval_only(cfg, resume=args.resume, allow_missing_weights=args.allow_missing_weights)
    do_train(cfg, resume=args.resume)
    comm.synchronize()


def check_before_launch(args: argparse.Namespace):
    """The launch arguments and the config checked before any process starts (``ConfigKeyError`` /
    ``ConfigValueError`` naming the key); returns the loaded config."""
    check_launch_args(args)
    if not os.path.isfile(args.config_file):
        raise ConfigValueError(f"--config-file {args.config_file!r}: no such file")
    cfg = load_det_config(args.config_file, args.opts)
    if not args.eval_only:
        check_config(cfg, args.num_gpus * args.num_machines)
    return cfg


def prepare_datasets(cfg) -> None:
    """Writes the config's synthetic datasets once, before worker processes start."""
    prepare_config_datasets(OmegaConf.to_container(cfg.dataloader.get("datasets", []), resolve=True))


def world_size(args: argparse.Namespace) -> int:
    return args.num_gpus * args.num_machines


def launch_processes(args: argparse.Namespace):
    """Detectron2's ``launch`` of :func:`main` with this run's machines, processes and start-up timeout."""
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=datetime.timedelta(seconds=args.dist_timeout),
    )
