"""Distributed start-up of the segmentation tools (``--launcher pytorch``): torchrun's variables checked, the
process group joined with a bounded wait, and a failed start-up explained."""

from __future__ import annotations

import logging
import os

from mmengine.config import Config

from .config_checks import ConfigValueError

logger = logging.getLogger(__name__)

__all__ = ["TORCHRUN_VARIABLES", "start_distributed"]

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def start_distributed(cfg: Config, timeout_s: float) -> None:
    """For ``--launcher pytorch``: checks that torchrun's variables are set and joins the process group with a
    bounded wait; a missing rank ends with a message saying who is missing. mmengine's runner then uses the
    group. Without CUDA the ``nccl`` backend of the configs is replaced by ``gloo``."""
    import torch

    from eva_transfer.runtime import join_process_group

    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise ConfigValueError(
            f"--launcher pytorch expects the variables torchrun sets ({', '.join(missing)} not set). Run: "
            "torchrun --nproc-per-node <processes per machine> tools/train_seg.py CONFIG --launcher pytorch "
            "(or leave out --launcher for one process)"
        )
    if timeout_s <= 0:
        raise ConfigValueError(f"--dist-timeout {timeout_s}: give a number of seconds > 0")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist_cfg = cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})
    backend = dist_cfg.get("backend", "nccl")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif backend == "nccl":
        backend = "gloo"
    dist_cfg["timeout"] = timeout_s
    join_process_group(
        backend,
        rank,
        world,
        timeout_s,
        missing_hint=". Start every process (torchrun --nnodes/--nproc-per-node on each machine)",
        unreachable_hint="; start rank 0 and check MASTER_ADDR / MASTER_PORT",
        error=ConfigValueError,
    )
