"""CPU thread selection (eva_transfer.runtime) and its use by the three tools' data loaders."""

from __future__ import annotations

import pytest
import torch

from eva_transfer.runtime import configure_cpu_threads, default_cpu_threads


def test_default_share_of_cores():
    assert default_cpu_threads(1, 0, cores=2) == 2
    assert default_cpu_threads(1, 1, cores=2) == 1  # the tiny recipes: one worker beside the main process
    assert default_cpu_threads(2, 4, cores=16) == 1
    assert default_cpu_threads(1, 3, cores=16) == 4
    assert default_cpu_threads(4, 0, cores=2) == 1
    with pytest.raises(ValueError, match="processes"):
        default_cpu_threads(0, 0)


def test_configure_order_of_choice(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("EVA_NUM_THREADS", raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr("eva_transfer.runtime.available_cores", lambda: 4)
        assert configure_cpu_threads(device="cpu", workers=1) == 2 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert configure_cpu_threads(device="cpu", workers=1) == 3 == torch.get_num_threads()
        monkeypatch.setenv("EVA_NUM_THREADS", "1")
        assert configure_cpu_threads(device="cpu") == 1
        assert configure_cpu_threads(2, device="cpu") == 2 == torch.get_num_threads()
        monkeypatch.setenv("EVA_NUM_THREADS", "many")
        with pytest.raises(ValueError, match="EVA_NUM_THREADS"):
            configure_cpu_threads(device="cpu")
        with pytest.raises(ValueError, match="--num-threads"):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


_WORKER_THREADS_SCRIPT = """
import json, os, pickle
import torch
from torch.utils.data import DataLoader, Dataset
from eva_transfer.runtime import WorkerThreads

class Seen(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

def seen(loader):
    return [(int(t), env) for batch in loader for t, env in zip(*batch)]

torch.set_num_threads(2)
calls = []
init = WorkerThreads(1, then=calls.append)  # then= runs in the worker; the list there is a copy
one = seen(DataLoader(Seen(), batch_size=1, num_workers=1, worker_init_fn=init, timeout=120))
init3 = pickle.loads(pickle.dumps(WorkerThreads(3)))  # spawned workers receive it pickled
three = seen(DataLoader(Seen(), batch_size=1, num_workers=1, worker_init_fn=init3, timeout=120))
print(json.dumps([one, three, torch.get_num_threads()]))
"""


def test_cpu_data_loader_worker_runs_with_one_thread():
    # in a fresh interpreter: forked workers of a long-lived test process can inherit a lock another thread held
    # at the fork (seen as a worker that never answers), which says nothing about WorkerThreads
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _WORKER_THREADS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    one, three, parent_threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert [tuple(x) for x in one] == [(1, "1"), (1, "1")]
    assert {t for t, _ in three} == {3}
    assert parent_threads == 2  # the workers' setting does not leak into the main process
    # without it, PyTorch's own worker default (1 torch thread) leaves OMP_NUM_THREADS as inherited


def test_segmentation_worker_init_sets_threads_and_seeds():
    import numpy as np
    from mmengine.config import Config

    from eva_transfer_projects.segmentation.runtime import apply_worker_threads, worker_threads_init

    cfg = Config(
        dict(
            randomness=dict(seed=5),
            train_dataloader=dict(num_workers=2, batch_size=1),
            test_dataloader=dict(num_workers=0, batch_size=1),
        )
    )
    apply_worker_threads(cfg)
    assert cfg.train_dataloader.worker_init_fn == dict(
        type="EVAWorkerThreads", threads=1, num_workers=2, rank=0, seed=5
    )
    assert "worker_init_fn" not in cfg.test_dataloader
    before = torch.get_num_threads()
    try:
        worker_threads_init(1, threads=1, num_workers=2, rank=0, seed=5)
        assert torch.get_num_threads() == 1
        a = np.random.rand()
        np.random.seed(2 * 0 + 1 + 5)  # mmengine's default worker seed
        assert np.random.rand() == a
    finally:
        torch.set_num_threads(before)


# --- the stop-on-signal flag and the distributed start-up shared by the three training loops ----------------------


def test_stop_signals_set_the_flag_then_a_second_signal_interrupts():
    import os
    import signal

    from eva_transfer.runtime import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    warnings = []
    with StopSignals("iteration", warn=warnings.append) as stop:
        assert not stop.set and not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        # nothing is written inside the handler (it may interrupt a write to the same log stream): the loop's next
        # look at the flag writes the warning
        assert warnings == []
        assert stop.set and stop.requested()  # one process: the flag itself
        assert warnings == [
            f"signal {int(signal.SIGTERM)}: finishing this iteration, writing a checkpoint, then stopping"
        ]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_rendezvous_failure_reads_torch_messages():
    from eva_transfer.runtime import RendezvousFailure, rendezvous_failure

    server = RuntimeError(
        "DistStoreError: Timed out after 9 seconds waiting for clients. 2/6 clients joined."
    )
    client = RuntimeError(
        "DistNetworkError: The client socket has timed out after 8000ms while trying to connect"
    )
    assert rendezvous_failure(server) == RendezvousFailure("partial", 2, 6)
    assert rendezvous_failure(client) == RendezvousFailure("unreachable")
    assert rendezvous_failure(RuntimeError("Socket Timed out")) == RendezvousFailure("timeout")
    assert rendezvous_failure(ValueError("something else")) is None


def test_join_process_group_names_who_is_missing(monkeypatch):
    import torch.distributed as dist

    from eva_transfer.runtime import DistributedStartupError, join_process_group

    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    seen = {}

    def fail(backend, **kwargs):
        seen.update(kwargs, backend=backend)
        raise RuntimeError(
            seen.get("text", "Timed out after 5 seconds waiting for clients. 1/3 clients joined.")
        )

    monkeypatch.setattr(dist, "init_process_group", fail)
    with pytest.raises(DistributedStartupError) as err:
        join_process_group("gloo", 0, 3, 5, missing_hint=" (hint)")
    assert str(err.value) == (
        "distributed start-up: only 1 of 3 processes (WORLD_SIZE=3) joined within 5 s at node0:29500; "
        "2 of ranks 1..2 are missing (hint)"
    )
    assert seen["rank"] == 0 and seen["world_size"] == 3 and seen["timeout"].total_seconds() == 5

    seen["text"] = "connection refused"
    with pytest.raises(
        KeyError, match=r"rank 2 could not reach rank 0 at node0:29500 within 2.5 s; start it"
    ):
        join_process_group("gloo", 2, 3, 2.5, unreachable_hint="; start it", error=KeyError)
    seen["text"] = "an unrelated failure"
    with pytest.raises(RuntimeError, match="an unrelated failure"):
        join_process_group("gloo", 1, 3, 2.5)


def test_stop_signals_outside_the_main_thread_install_nothing():
    import signal
    import threading

    from eva_transfer.runtime import StopSignals

    before = signal.getsignal(signal.SIGINT)
    seen = []

    def run():
        with StopSignals() as stop:
            seen.append((signal.getsignal(signal.SIGINT) is before, stop.set, stop.requested()))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [(True, False, False)]


_JOIN_AND_REDUCE = """
import os
import torch.distributed as dist
from eva_transfer.runtime import StopSignals, join_process_group

rank = int(os.environ["RANK"])
join_process_group("gloo", rank, 2, 60)
stop = StopSignals()
stop.set = rank == 1
print("requested", rank, stop.set, stop.requested(), flush=True)
dist.destroy_process_group()
"""


def test_stop_signals_request_reaches_every_process(tmp_path):
    # two processes joined by join_process_group; only rank 1 is signalled, both decide to stop
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = str(Path(__file__).resolve().parents[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _JOIN_AND_REDUCE],
            env=dict(os.environ, PYTHONPATH=repo, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port), OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    lines = [next((ln for ln in out.splitlines() if ln.startswith("requested")), out) for out in outputs]
    assert lines == ["requested 0 False True", "requested 1 True True"], outputs
