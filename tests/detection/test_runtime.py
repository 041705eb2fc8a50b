"""Detection loaders run their data-loader workers with a fixed thread count, keeping Detectron2's seeding."""

from __future__ import annotations

from eva_transfer.runtime import WorkerThreads

from .conftest import TINY_COCO


def test_detection_loaders_chain_worker_threads(synthetic_root):
    from detectron2.config import instantiate
    from detectron2.data.build import worker_init_reset_seed

    from eva_transfer_projects.detection.engine import load_det_config, setup_datasets
    from eva_transfer_projects.detection.runtime import find_data_loaders, with_worker_threads

    cfg = load_det_config(TINY_COCO, [f"dataloader.synthetic_root={synthetic_root}"])
    setup_datasets(cfg)
    loader = with_worker_threads(instantiate(cfg.dataloader.train), threads=1)
    (dl,) = find_data_loaders(loader)
    assert isinstance(dl.worker_init_fn, WorkerThreads)
    assert dl.worker_init_fn.then is worker_init_reset_seed  # Detectron2's seeding still runs
    test_loader = with_worker_threads(instantiate(cfg.dataloader.test))
    assert isinstance(find_data_loaders(test_loader)[0].worker_init_fn, WorkerThreads)
