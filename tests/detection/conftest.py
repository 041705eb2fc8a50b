"""Shared fixtures of the detection tests: tiny models and synthetic datasets written once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import eva_transfer_projects.detection  # noqa: F401  (stand-ins before any detectron2 model import)

REPO = Path(__file__).resolve().parents[2]
TINY_COCO = str(REPO / "configs/detection/tiny_coco.py")
TINY_LVIS = str(REPO / "configs/detection/tiny_lvis.py")
TRAIN_NET = str(REPO / "tools/train_net.py")


@pytest.fixture
def registered():
    """A list a test appends dataset names to; they are unregistered afterwards."""
    from eva_transfer_projects.detection.data import unregister_dataset

    names = []
    yield names
    for name in names:
        unregister_dataset(name)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Root for the tiny configs' synthetic datasets (``dataloader.synthetic_root``), written on first use."""
    return tmp_path_factory.mktemp("synthetic")


def train_net_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def python() -> str:
    return sys.executable
