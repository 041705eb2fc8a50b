"""Shared helpers of the segmentation tests: the plug-in registered, tiny-config overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.registry import DefaultScope

import eva_transfer_projects.segmentation  # noqa: F401  (stand-ins and registration before any mmseg model import)

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(ROOT / "configs/segmentation/eva_tiny_mask2former_synthetic.py")
CONFIG_DIR = ROOT / "configs/segmentation"


def data_options(root) -> list[str]:
    """``--cfg-options`` pointing the tiny config's three dataloaders at ``root``."""
    return [
        f"{k}.dataset.data_root={root}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")
    ]


@pytest.fixture(autouse=True, scope="module")
def _mmseg_scope():
    """Registries resolve names in mmseg's scope, as the configs' ``default_scope`` makes them in the tools."""
    import mmseg.datasets  # noqa: F401
    import mmseg.models  # noqa: F401

    with DefaultScope.overwrite_default_scope("mmseg"):
        yield
