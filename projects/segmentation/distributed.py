"""Distributed start-up of the segmentation tools (``--launcher pytorch``): torchrun's variables checked, the
process group joined with a bounded wait, and a failed start-up explained."""

from __future__ import annotations

import logging
import os
import re

from mmengine.config import Config

from .config_checks import ConfigValueError

logger = logging.getLogger(__name__)

__all__ = ["TORCHRUN_VARIABLES", "start_distributed"]

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def start_distributed(cfg: Config, timeout_s: float) -> None:
    """For ``--launcher pytorch``: checks that torchrun's variables are set and joins the process group with a
    bounded wait; a missing rank ends with a message saying who is missing. mmengine's runner then uses the
    group. Without CUDA the ``nccl`` backend of the configs is replaced by ``gloo``."""
    import datetime

    import torch
    import torch.distributed as dist

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
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    dist_cfg = cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})
    backend = dist_cfg.get("backend", "nccl")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif backend == "nccl":
        backend = "gloo"
    dist_cfg["timeout"] = timeout_s
    logger.info("rank %d: waiting up to %g s for %d processes at %s", rank, timeout_s, world, where)
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except Exception as e:
        text = str(e)
        joined = re.search(r"(\d+)/(\d+) clients joined", text)
        if joined:
            k, n = int(joined.group(1)), int(joined.group(2))
            raise ConfigValueError(
                f"distributed start-up: only {k} of {n} processes (WORLD_SIZE={world}) joined within {timeout_s:g} s "
                f"at {where}; {n - k} of ranks 1..{n - 1} are missing. Start every process (torchrun "
                "--nnodes/--nproc-per-node on each machine)"
            ) from e
        if "timed out" in text.lower() or "connect" in text.lower():
            raise ConfigValueError(
                f"distributed start-up: rank {rank} could not reach rank 0 at {where} within {timeout_s:g} s; "
                "start rank 0 and check MASTER_ADDR / MASTER_PORT"
            ) from e
        raise
