#!/usr/bin/env python
"""Train or evaluate an EVA detector from a LazyConfig file (Detectron2 conventions).

    tools/train_net.py --config-file configs/detection/eva_g_coco_1280.py --num-gpus 8 \
        train.init_checkpoint=output/eva_g_o365/model_final.pth
    tools/train_net.py --config-file configs/detection/tiny_coco.py                  # CPU, minutes
    tools/train_net.py --config-file CFG --resume                                   # continue an interrupted run
    tools/train_net.py --config-file CFG --eval-only train.init_checkpoint=model.pth

Several machines: ``--num-machines M --machine-rank R --dist-url tcp://HOST:PORT`` on each. On a machine without
GPUs, ``--num-gpus N`` starts N CPU processes (gloo).

The options shared by all tools are accepted here too: ``--output-dir``/``--work-dir`` (train.output_dir),
``--cfg-options``/``--opts`` (more key=value overrides), ``--device`` (train.device) and ``--num-threads``
(CPU threads per process; by default the cores shared among processes and data-loader workers).
"""

from __future__ import annotations

import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import eva_transfer_projects.detection  # noqa: E402,F401  (stand-ins and registrations first)

# isort: split
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from eva_transfer.checkpoint import CheckpointError  # noqa: E402
from eva_transfer.runtime import add_run_arguments, configure_cpu_threads  # noqa: E402
from eva_transfer_projects.detection.config_checks import (  # noqa: E402
    ConfigValueError,
    check_config,
    check_launch_args,
    explain_startup_failure,
)
from eva_transfer_projects.detection.data.config_datasets import prepare_config_datasets  # noqa: E402
from eva_transfer_projects.detection.engine import (  # noqa: E402
    ConfigKeyError,
    WeightsNotLoadedError,
    do_eval_only,
    do_train,
    load_det_config,
    setup_datasets,
    setup_run,
)


def configure_threads(cfg, args) -> int:
    """This process's CPU threads: one share of the cores per process and data-loader worker."""
    loader = cfg.dataloader.test if args.eval_only else cfg.dataloader.train
    device = str(cfg.train.get("device", "cpu"))
    processes = max(1, int(args.num_gpus)) if not device.startswith("cuda") else 1
    return configure_cpu_threads(
        args.num_threads, device=device, processes=processes, workers=int(loader.get("num_workers", 0) or 0)
    )


def main(args):
    cfg = load_det_config(args.config_file, args.opts)
    setup_run(cfg, args)
    configure_threads(cfg, args)
    setup_datasets(cfg)
    if args.eval_only:
        return do_eval_only(cfg, resume=args.resume, allow_missing_weights=args.allow_missing_weights)
    do_train(cfg, resume=args.resume)
    comm.synchronize()


def parser():
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


def parse_args(argv=None):
    """Detectron2's arguments plus the shared ones; these are folded into ``args.opts``."""
    args = parser().parse_args(argv)
    args.opts = list(args.opts or []) + list(args.extra_opts)
    if args.output_dir:
        args.opts.append(f"train.output_dir={args.output_dir}")
    if args.device:
        args.opts.append(f"train.device={args.device}")
    return args


def cli(argv=None):
    args = parse_args(argv)
    try:
        check_launch_args(args)
        if not os.path.isfile(args.config_file):
            raise ConfigValueError(f"--config-file {args.config_file!r}: no such file")
        cfg = load_det_config(args.config_file, args.opts)
        if not args.eval_only:
            check_config(cfg, args.num_gpus * args.num_machines)
    except (ConfigKeyError, ConfigValueError) as e:
        sys.exit(f"error: {e}")
    # write synthetic datasets once, before worker processes start
    prepare_config_datasets(OmegaConf.to_container(cfg.dataloader.get("datasets", []), resolve=True))
    del cfg
    world = args.num_gpus * args.num_machines
    if world > 1:
        print(
            f"waiting up to {args.dist_timeout:g} s for {world} processes ({args.num_machines} machine(s) x "
            f"{args.num_gpus}) at {args.dist_url}",
            flush=True,
        )
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=datetime.timedelta(seconds=args.dist_timeout),
        )
    except (WeightsNotLoadedError, CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except Exception as e:
        # only a multi-process start-up failure is translated; anything else keeps its traceback
        message = explain_startup_failure(e, args, args.dist_timeout) if world > 1 else None
        if message is None:
            raise
        sys.exit(f"error: {message}")


if __name__ == "__main__":
    cli()
