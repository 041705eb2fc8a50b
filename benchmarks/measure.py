"""The one implementation of the measurements the benchmarks share: peak memory, timing, the matmul-rate probe and
running a measurement in a fresh process.

Peak memory of a region of code::

    with PeakMemory(device) as peak:
        step()
    peak.bytes  # CUDA: torch.cuda.max_memory_allocated above what was allocated at the start;
                # CPU (Linux): the rise of the resident-set high-water mark (VmHWM, reset through
                # /proc/self/clear_refs) above the resident size (VmRSS) at the start

On a CPU the high-water mark is the process's, so a measurement is the region's own only in a process that does
nothing else at the same time; the benchmarks run each one in a fresh process (:func:`run_child`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

__all__ = [
    "PeakMemory",
    "best_time",
    "clock",
    "interleaved_times",
    "matmul_rate",
    "medians",
    "proc_status_kb",
    "reset_peak_rss",
    "run_child",
    "sync",
    "time_call",
]

#: the wall clock of every timing here (one place to replace, e.g. by a test's fake clock)
clock = time.perf_counter
PROC_STATUS = "/proc/self/status"
PROC_CLEAR_REFS = "/proc/self/clear_refs"


# ------------------------------------------------------------------------------------------------ memory
def proc_status_kb(field: str, status_file: str = PROC_STATUS) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``: resident size now, ``VmHWM``: its high-water mark)."""
    with open(status_file) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{status_file} has no field {field!r} (expected a Linux process status file)")


def reset_peak_rss() -> bool:
    """Resets the resident-set high-water mark (VmHWM) to the current resident size; False where the kernel does
    not allow it (then VmHWM keeps the process's peak so far)."""
    try:
        with open(PROC_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


class PeakMemory:
    """Context manager: ``bytes`` is the peak memory the ``with`` block needed above what was in use when it
    started (see the module's docstring), ``total`` the peak including what was in use before (CUDA: the
    allocator's peak; CPU: the resident-set high-water mark). On a CPU where the high-water mark cannot be reset,
    both are ``None`` with ``strict=False`` and an error with ``strict=True``."""

    def __init__(self, device="cpu", strict: bool = True):
        self.device = str(device)
        self.strict = strict
        self.bytes: int | None = None
        self.total: int | None = None
        self._base = 0

    def __enter__(self) -> PeakMemory:
        if _is_cuda(self.device):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            if not reset_peak_rss():
                if self.strict:
                    raise RuntimeError(
                        f"cannot reset the peak resident size ({PROC_CLEAR_REFS} not writable)"
                    )
                self._base = None
                return self
            self._base = proc_status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if _is_cuda(self.device):
            torch.cuda.synchronize()
            self.total = torch.cuda.max_memory_allocated()
        elif self._base is not None:
            self.total = proc_status_kb("VmHWM") * 1024
        if self.total is not None:
            self.bytes = self.total - self._base


# ------------------------------------------------------------------------------------------------ timing
def sync(device) -> None:
    """Waits for the device's queued work (CUDA); nothing on a CPU."""
    if _is_cuda(device):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device="cpu") -> float:
    """Wall-clock seconds of one call of ``fn``, the device's queued work included."""
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def best_time(fn: Callable[[], object], repeat: int = 1, device="cpu") -> tuple[object, float]:
    """(the last call's result, the best wall time over ``repeat`` calls): the best run is the least disturbed."""
    best, out = float("inf"), None
    for _ in range(repeat):
        sync(device)
        start = clock()
        out = fn()
        sync(device)
        best = min(best, clock() - start)
    return out, best


def interleaved_times(
    fns: dict[str, Callable[[], object]], device="cpu", repeat: int = 3, warmup: bool = True
) -> dict[str, dict[str, list[float]]]:
    """Runs the callables alternately (a, b, a, b, ...), so that drift in the machine's speed hits all alike,
    after one warm-up call each. Returns ``{name: {"wall": [...], "cpu": [...]}}`` in seconds per run (CPU time
    is the process's, which other processes on the machine disturb less)."""
    if warmup:
        for fn in fns.values():
            fn()
        sync(device)
    runs = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            t0, c0 = clock(), time.process_time()
            fn()
            sync(device)
            runs[name]["wall"].append(clock() - t0)
            runs[name]["cpu"].append(time.process_time() - c0)
    return runs


def medians(runs: dict[str, dict[str, list[float]]]) -> dict[str, tuple[float, float]]:
    """``{name: (median wall, median CPU seconds)}`` of :func:`interleaved_times`' runs."""
    return {k: (statistics.median(v["wall"]), statistics.median(v["cpu"])) for k, v in runs.items()}


def matmul_rate(device="cpu", tries: int = 10, n: int = 2048) -> float:
    """Best of ``tries`` fp32 ``n``-cubed matrix products, in FLOP/s (same process, same threads as the models it
    is compared with)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(tries):
        sync(device)
        t = clock()
        a @ b
        sync(device)
        best = min(best, clock() - t)
    return 2 * n**3 / best


# ------------------------------------------------------------------------------------------------ processes
def run_child(
    module: str, argv: list[str], env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Runs ``python -m module *argv`` in a fresh process with this process's import path (so that the child
    imports the same copies of the packages), and returns the completed process (stdout and stderr as text);
    ``timeout`` seconds raise ``subprocess.TimeoutExpired``."""
    child_env = dict(os.environ if env is None else env)
    path = [p for p in sys.path if p] + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in path))
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        env=child_env,
        check=False,
        timeout=timeout,
    )
