"""Shared fixtures: generated images and the tiny config (tests use fixtures; with importlib mode a test module
cannot import this file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "pretrain" / "eva_tiny_cpu.py"


def _make_images(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (160, 144)) -> list[Path]:
    """``n`` PNGs of a smooth colour gradient with a few filled rectangles and ellipses (learnable structure)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
            x1, y1 = x0 + rng.integers(15, w // 2), y0 + rng.integers(15, h // 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=colour)
        p = folder / f"img_{i:04d}.png"
        img.save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    _make_images(folder, 64)
    return folder


def _tiny_overrides(root: Path, out: Path, **extra) -> list[str]:
    """Overrides for a fast run of the tiny preset on ``root``, writing to ``out``."""
    base = {"data.root": str(root), "train.output_dir": str(out)}
    base.update(extra)
    return [f"{k}={v!r}" for k, v in base.items()]


@pytest.fixture(scope="session")
def make_images():
    return _make_images


@pytest.fixture(scope="session")
def tiny_overrides():
    return _tiny_overrides


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return TINY_CONFIG


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine run fastest on one thread (no OpenMP spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
