"""Per-process run settings of the segmentation tools: CPU threads (main process and data-loader workers) and
the device.

mmengine builds a DataLoader's ``worker_init_fn`` from the dataloader config; :func:`apply_worker_threads` sets
it to :func:`worker_threads_init` (registered in mmengine's ``FUNCTIONS`` as ``"EVAWorkerThreads"``), which gives
each worker a fixed thread count and then seeds it as mmengine's default does.
"""

from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import FUNCTIONS

from eva_transfer.runtime import WorkerThreads, configure_cpu_threads

__all__ = ["worker_threads_init", "apply_worker_threads", "configure_run", "DATALOADERS"]

DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def _seed_worker(worker_id: int, num_workers: int = 1, rank: int = 0, seed: Optional[int] = None) -> None:
    # mmengine's default: seed = num_workers * rank + worker_id + user seed; without a user seed, from the
    # per-worker torch seed (itself drawn from the seeded main process)
    worker_seed = (
        num_workers * rank + worker_id + int(seed) if seed is not None else torch.initial_seed() % 2**31
    )
    np.random.seed(worker_seed % 2**32)
    random.seed(worker_seed)
    torch.manual_seed(worker_seed)


@FUNCTIONS.register_module(name="EVAWorkerThreads", force=True)
def worker_threads_init(
    worker_id: int, threads: int = 1, num_workers: int = 1, rank: int = 0, seed: Optional[int] = None
) -> None:
    """A data-loader worker's start: ``threads`` intra-op threads, then mmengine-style seeding."""
    WorkerThreads(threads)(worker_id)
    _seed_worker(worker_id, num_workers, rank, seed)


def apply_worker_threads(cfg: Config, threads: int = 1) -> None:
    """Sets the worker start function of each configured dataloader that has workers and none of its own."""
    seed = (cfg.get("randomness") or {}).get("seed", None)
    rank = int(os.environ.get("RANK", 0))
    for key in DATALOADERS:
        loader = cfg.get(key)
        if not loader or int(loader.get("num_workers", 0) or 0) == 0 or loader.get("worker_init_fn"):
            continue
        loader.worker_init_fn = dict(
            type="EVAWorkerThreads",
            threads=int(threads),
            num_workers=int(loader.num_workers),
            rank=rank,
            seed=seed,
        )


def configure_run(cfg: Config, num_threads: Optional[int] = None, device: Optional[str] = None) -> int:
    """Device and threads of one segmentation process; returns the thread count.

    ``device="cpu"`` hides the GPUs from this process (mmengine's Runner picks CUDA whenever it is available);
    ``cuda`` uses the default. Threads follow :func:`eva_transfer.runtime.configure_cpu_threads`, with the
    training (else test) loader's worker count.
    """
    if device is not None:
        if device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        elif not device.startswith("cuda"):
            raise ValueError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    on_gpu = device != "cpu" and torch.cuda.is_available()
    loader = cfg.get("train_dataloader") or cfg.get("test_dataloader") or {}
    workers = int(loader.get("num_workers", 0) or 0)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    apply_worker_threads(cfg)
    return configure_cpu_threads(
        num_threads, device="cuda" if on_gpu else "cpu", processes=processes, workers=workers
    )
