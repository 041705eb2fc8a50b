"""CPU thread selection (eva_transfer.runtime) and its use by the three tools' data loaders."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from eva_transfer.runtime import WorkerThreads, configure_cpu_threads, default_cpu_threads


class _ThreadsSeen(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import os

        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def _seen(loader):
    return [(int(t), env) for batch in loader for t, env in zip(*batch)]


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


def test_cpu_data_loader_worker_runs_with_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        calls = []
        init = WorkerThreads(1, then=calls.append)  # then= runs in the worker; the list there is a copy
        loader = DataLoader(_ThreadsSeen(), batch_size=1, num_workers=1, worker_init_fn=init)
        assert _seen(loader) == [(1, "1"), (1, "1")]
        init2 = pickle.loads(pickle.dumps(WorkerThreads(3)))  # spawned workers receive it pickled
        loader = DataLoader(_ThreadsSeen(), batch_size=1, num_workers=1, worker_init_fn=init2)
        assert {t for t, _ in _seen(loader)} == {3}
        # without it, PyTorch's own worker default (1 torch thread) leaves OMP_NUM_THREADS as inherited
    finally:
        torch.set_num_threads(before)


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
