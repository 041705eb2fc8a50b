"""Helper of the signal tests (detection and segmentation training): start a training command, wait until it
logs its first iteration, send it a signal and collect its exit status and output."""

from __future__ import annotations

import subprocess
import threading
from typing import Sequence


def signal_once_started(
    cmd: Sequence[str],
    env: dict,
    started: str,
    signum: int,
    start_timeout: float,
    stop_timeout: float = 120,
) -> tuple[int, str]:
    """Runs ``cmd``; once an output line contains ``started`` sends ``signum`` and waits for the exit.

    Returns ``(exit status, output)``. Fails the test when training does not start within ``start_timeout``
    seconds (showing the last output); the process is killed if it is still running at the end.
    """
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if started in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(start_timeout), "training did not start:\n" + "".join(lines[-40:])
        proc.send_signal(signum)
        rc = proc.wait(timeout=stop_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)  # the rest of the output
    return rc, "".join(lines)
