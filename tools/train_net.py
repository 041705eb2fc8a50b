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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from eva_transfer_projects.compat import silence_known_warnings  # noqa: E402

silence_known_warnings()  # this tool's choice, before the plug-in imports code that warns at import

import eva_transfer_projects.detection  # noqa: E402,F401  (stand-ins and registrations first)

# isort: split
from eva_transfer.checkpoint_io import CheckpointError  # noqa: E402
from eva_transfer_projects.detection.config_checks import ConfigValueError, explain_startup_failure  # noqa: E402
from eva_transfer_projects.detection.engine import ConfigKeyError, WeightsNotLoadedError  # noqa: E402
from eva_transfer_projects.detection.train_command import (  # noqa: E402
    check_before_launch,
    launch_processes,
    parse_args,
    prepare_datasets,
    world_size,
)


def cli(argv=None):
    args = parse_args(argv)
    try:
        cfg = check_before_launch(args)
    except (ConfigKeyError, ConfigValueError) as e:
        sys.exit(f"error: {e}")
    prepare_datasets(cfg)  # write synthetic datasets once, before worker processes start
    del cfg
    world = world_size(args)
    if world > 1:
        print(
            f"waiting up to {args.dist_timeout:g} s for {world} processes ({args.num_machines} machine(s) x "
            f"{args.num_gpus}) at {args.dist_url}",
            flush=True,
        )
    try:
        launch_processes(args)
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
