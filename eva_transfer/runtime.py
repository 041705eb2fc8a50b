"""CPU thread counts for training and evaluation processes and their data-loader workers.

On a small CPU machine the default of one intra-op thread per core in every process oversubscribes the cores as
soon as data-loader workers (or several CPU training processes) run beside the main process; a tiny detection
recipe ran 8-15x slower on 2 cores that way. :func:`configure_cpu_threads` picks the main process's count
(``cores // (processes * (1 + workers))``, at least 1) unless the user chose one, and :class:`WorkerThreads` (a
``worker_init_fn``) gives each data-loader worker a fixed count (1 by default).

The user's choice wins, in this order: an explicit ``threads`` argument (the tools' ``--num-threads``), then the
``EVA_NUM_THREADS`` or ``OMP_NUM_THREADS`` environment variable.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch

__all__ = [
    "available_cores",
    "default_cpu_threads",
    "configure_cpu_threads",
    "WorkerThreads",
    "add_run_arguments",
]

logger = logging.getLogger(__name__)

ENV_VARS = ("EVA_NUM_THREADS", "OMP_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_cpu_threads(processes: int = 1, workers: int = 0, cores: Optional[int] = None) -> int:
    """Intra-op threads for one of ``processes`` training processes on this machine, each with ``workers``
    data-loader workers: the cores shared evenly among all those processes, at least 1."""
    if processes < 1 or workers < 0:
        raise ValueError(
            f"processes must be >= 1 and workers >= 0, got processes={processes}, workers={workers}"
        )
    cores = available_cores() if cores is None else cores
    return max(1, cores // (processes * (1 + workers)))


def _from_env() -> Optional[tuple[str, int]]:
    for name in ENV_VARS:
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r}: expected a positive integer") from None
        if value < 1:
            raise ValueError(f"environment variable {name}={raw!r}: expected a positive integer")
        return name, value
    return None


def configure_cpu_threads(
    threads: Optional[int] = None,
    *,
    device: str = "cpu",
    processes: int = 1,
    workers: int = 0,
) -> int:
    """Sets this process's intra-op thread count for a run on ``device`` and returns it.

    ``threads`` (a positive int) is used as given on any device. Otherwise the ``EVA_NUM_THREADS`` /
    ``OMP_NUM_THREADS`` environment variables are honoured; otherwise a CPU run gets
    :func:`default_cpu_threads` and a GPU run keeps PyTorch's default. The choice is logged.
    """
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"--num-threads must be a positive integer, got {threads}")
        count, why = int(threads), "as requested"
    else:
        env = _from_env()
        if env is not None:
            count, why = env[1], f"from {env[0]}"
        elif str(device).startswith("cuda"):
            return torch.get_num_threads()
        else:
            count = default_cpu_threads(processes, workers)
            why = (
                f"{available_cores()} cores for {processes} process(es) x (1 + {workers} data-loader workers); "
                f"set --num-threads or EVA_NUM_THREADS to change"
            )
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    logger.info("Using %d CPU thread(s) per process (%s)", count, why)
    return count


def _set_worker_threads(count: int) -> None:
    torch.set_num_threads(count)
    os.environ["OMP_NUM_THREADS"] = str(count)  # for anything the worker starts
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(count)


class WorkerThreads:
    """A data-loader ``worker_init_fn`` that sets each worker's thread count, then calls ``then`` (for example a
    framework's seeding function) with the same arguments. Picklable, so it also works with spawned workers."""

    def __init__(self, threads: int = 1, then: Optional[Callable] = None):
        if int(threads) < 1:
            raise ValueError(f"worker threads must be a positive integer, got {threads}")
        self.threads = int(threads)
        self.then = then

    def __call__(self, worker_id: int, *args, **kwargs):
        _set_worker_threads(self.threads)
        if self.then is not None:
            return self.then(worker_id, *args, **kwargs)
        return None

    def __repr__(self) -> str:
        return f"WorkerThreads(threads={self.threads}, then={self.then!r})"


def add_run_arguments(parser, *, output: bool = True, overrides: bool = True) -> None:
    """Adds the options every command-line tool of this project spells the same way:

    ``--output-dir`` / ``--work-dir`` (dest ``output_dir``), ``--cfg-options`` / ``--opts`` (``key=value``
    overrides, dest ``extra_opts``), ``--device`` and ``--num-threads``. A tool that already defines one of the
    first two passes ``output=False`` / ``overrides=False`` and names both spellings itself.
    """
    if output:
        parser.add_argument(
            "--output-dir",
            "--work-dir",
            dest="output_dir",
            default=None,
            help="output folder (checkpoints, logs); overrides the config's",
        )
    if overrides:
        parser.add_argument(
            "--cfg-options",
            "--opts",
            dest="extra_opts",
            nargs="+",
            action="extend",
            default=[],
            metavar="KEY=VALUE",
            help="config overrides key=value (also accepted as trailing arguments where the tool takes them)",
        )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N; overrides the config's device")
    parser.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="intra-op CPU threads per process (default: EVA_NUM_THREADS / OMP_NUM_THREADS, else the cores "
        "shared among processes and data-loader workers)",
    )
