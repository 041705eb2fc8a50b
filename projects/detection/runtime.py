"""Per-process run settings of the detection tools: CPU threads of the main process and of data-loader workers.

Detectron2's loader builders fix their own ``worker_init_fn`` (seeding); :func:`with_worker_threads` finds the
``torch.utils.data.DataLoader`` inside a built loader (also behind Detectron2's aspect-ratio grouping and map
wrappers) and chains :class:`eva_transfer.runtime.WorkerThreads` in front of it.
"""

from __future__ import annotations

import torch.utils.data as torchdata

from eva_transfer.runtime import WorkerThreads

__all__ = ["with_worker_threads", "find_data_loaders"]


def find_data_loaders(loader, depth: int = 4) -> list[torchdata.DataLoader]:
    """The torch DataLoaders inside ``loader`` (itself, or reached through ``dataset`` / ``_dataset``)."""
    if isinstance(loader, torchdata.DataLoader):
        return [loader]
    found = []
    if depth > 0:
        for attr in ("dataset", "_dataset"):
            inner = getattr(loader, attr, None)
            if inner is not None and inner is not loader:
                found += find_data_loaders(inner, depth - 1)
    return found


def with_worker_threads(loader, threads: int = 1):
    """Returns ``loader`` with every worker of its DataLoader(s) running ``threads`` intra-op thread(s)."""
    for dl in find_data_loaders(loader):
        current = dl.worker_init_fn
        if isinstance(current, WorkerThreads):
            current.threads = int(threads)
            continue
        dl.worker_init_fn = WorkerThreads(threads, then=current)
    return loader
