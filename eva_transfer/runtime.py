"""CPU thread counts for training and evaluation processes and their data-loader workers.

On a small CPU machine the default of one intra-op thread per core in every process oversubscribes the cores as
soon as data-loader workers (or several CPU training processes) run beside the main process; a tiny detection
recipe ran 8-15x slower on 2 cores that way. :func:`configure_cpu_threads` picks the main process's count
(``cores // (processes * (1 + workers))``, at least 1) unless the user chose one, and :class:`WorkerThreads` (a
``worker_init_fn``) gives each data-loader worker a fixed count (1 by default).

The user's choice wins, in this order: an explicit ``threads`` argument (the tools' ``--num-threads``), then the
``EVA_NUM_THREADS`` or ``OMP_NUM_THREADS`` environment variable.

Also the pieces every training loop shares: :class:`StopSignals` (SIGINT / SIGTERM finish the step, save, stop)
and :func:`join_process_group` (a bounded distributed start-up whose error says who is missing).
"""

from __future__ import annotations

import logging
import os
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional

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


# ------------------------------------------------------------------------ stopping on a signal, distributed start-up
# One definition of each for the three training loops: pre-training (eva_transfer.pretrain.trainer), the Detectron2
# hook (eva_transfer_projects.detection.interrupt) and the mmengine loop (eva_transfer_projects.segmentation.training).

__all__ += [
    "StopSignals",
    "DistributedStartupError",
    "RendezvousFailure",
    "rendezvous_failure",
    "join_process_group",
]


class StopSignals:
    """SIGINT / SIGTERM set :attr:`set`, so that a training loop finishes its step, saves and returns; a second
    signal raises ``KeyboardInterrupt`` at once.

    A context manager (or :meth:`install` / :meth:`restore`, for frameworks with before/after hooks): the previous
    handlers come back on exit. Outside the main thread Python allows no handlers, and none are installed.
    ``unit`` names what finishes in the warning ("step", "iteration"); ``warn`` receives that warning (default:
    this module's logger).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, unit: str = "step", warn: Optional[Callable[[str], None]] = None):
        self._flag = False
        self._pending: Optional[str] = None  # the warning, written by the first read of :attr:`set`
        self.unit = unit
        self._warn = warn if warn is not None else logger.warning
        self._previous: dict[int, Any] = {}

    @property
    def set(self) -> bool:
        """Whether a signal arrived. Its warning is written by the first read after it, not by the handler: the
        handler runs between two bytecodes of whatever the loop was doing, and a log write there can re-enter the
        stream the loop was writing to (``RuntimeError: reentrant call``, printed with a traceback)."""
        if self._pending is not None:
            message, self._pending = self._pending, None
            self._warn(message)
        return self._flag

    @set.setter
    def set(self, value: bool) -> None:
        self._flag = bool(value)

    def _handler(self, signum, frame):
        if self._flag:  # a second signal: give up immediately
            raise KeyboardInterrupt
        self._pending = f"signal {signum}: finishing this {self.unit}, writing a checkpoint, then stopping"
        self._flag = True

    def install(self) -> StopSignals:
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread: no handlers
            pass
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def requested(self, device: Any = None) -> bool:
        """The flag, reduced over the processes of an initialised process group (any process signalled: all
        stop after the same step); a collective there, so every process calls it at the same point. ``device``
        holds the reduced value (default: the current CUDA device for ``nccl``, else the CPU)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.set
        if device is None:
            device = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([float(self.set)], device=device)
        dist.all_reduce(flag)
        return flag.item() > 0


class DistributedStartupError(RuntimeError):
    """Not every process of a distributed run started; the message says who is missing."""


@dataclass(frozen=True)
class RendezvousFailure:
    """What a failed rendezvous says about the processes: ``kind`` is ``"partial"`` (only ``joined`` of
    ``expected`` processes arrived: the server side), ``"unreachable"`` (this process could not connect to the
    server) or ``"timeout"`` (a time-out that says neither)."""

    kind: str
    joined: Optional[int] = None
    expected: Optional[int] = None


def rendezvous_failure(error: BaseException) -> Optional[RendezvousFailure]:
    """Reads torch's rendezvous error text (``"... 2/6 clients joined"``, ``"... trying to connect ..."``,
    ``"Timed out ..."``); None when ``error`` is something else."""
    text = str(error)
    joined = re.search(r"(\d+)/(\d+) clients joined", text)
    if joined:
        return RendezvousFailure("partial", int(joined.group(1)), int(joined.group(2)))
    lower = text.lower()
    if "connect" in lower:  # "trying to connect", "Connection refused"
        return RendezvousFailure("unreachable")
    if "timed out" in lower:
        return RendezvousFailure("timeout")
    return None


def join_process_group(
    backend: str,
    rank: int,
    world: int,
    timeout_s: float,
    *,
    missing_hint: str = "",
    unreachable_hint: str = "",
    error: type[Exception] = DistributedStartupError,
) -> None:
    """``torch.distributed.init_process_group`` from torchrun's variables (``MASTER_ADDR`` / ``MASTER_PORT``
    set), waiting at most ``timeout_s`` seconds. A rendezvous that fails raises ``error`` saying who is missing:
    "only k of n processes (WORLD_SIZE=...) joined within ... s at host:port; ... are missing" followed by
    ``missing_hint``, or "rank r could not reach rank 0 at host:port within ... s" followed by
    ``unreachable_hint``."""
    import datetime

    import torch.distributed as dist

    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
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
        failure = rendezvous_failure(e)
        if failure is None:
            raise
        if failure.kind == "partial":
            k, n = failure.joined, failure.expected
            raise error(
                f"distributed start-up: only {k} of {n} processes (WORLD_SIZE={world}) joined within {timeout_s:g} s "
                f"at {where}; {n - k} of ranks 1..{n - 1} are missing{missing_hint}"
            ) from e
        raise error(
            f"distributed start-up: rank {rank} could not reach rank 0 at {where} within {timeout_s:g} s"
            f"{unreachable_hint}"
        ) from e
