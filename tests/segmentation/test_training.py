"""The tiny config learns the synthetic ADE-layout data from scratch; test and inference tools on the result."""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
from PIL import Image

from eva_transfer_projects.segmentation import evaluate_command, infer_command, train_command
from eva_transfer_projects.segmentation.synthetic import SYNTHETIC_PALETTE, write_synthetic_ade

from .conftest import TINY_CONFIG, data_options

pytestmark = pytest.mark.slow

#: mIoU (percent) the tiny model must reach on the held-out images
MIN_MIOU = 60.0


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """Trains the tiny config as it is (150 iterations) on 64 synthetic images; 16 held-out images."""
    root = tmp_path_factory.mktemp("synthetic_ade")
    write_synthetic_ade(root, num_train=64, num_val=16, size=64, seed=0)
    work_dir = tmp_path_factory.mktemp("work")
    train = train_command
    wall, cpu = time.perf_counter(), _cpu_seconds()
    runner = train.main([TINY_CONFIG, "--work-dir", str(work_dir), "--cfg-options", *data_options(root)])
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    print(f"tiny config: {runner.iter} iterations in {wall:.0f} s wall, {cpu:.0f} s CPU")
    return dict(
        root=root, work_dir=work_dir, checkpoint=work_dir / f"iter_{runner.iter}.pth", iters=runner.iter
    )


def test_tiny_config_reaches_miou_on_held_out_images(trained):
    test = evaluate_command
    metrics = test.main(
        [
            TINY_CONFIG,
            str(trained["checkpoint"]),
            "--work-dir",
            str(trained["work_dir"] / "test"),
            "--cfg-options",
            *data_options(trained["root"]),
        ]
    )
    print(f"held-out mIoU after {trained['iters']} iterations: {metrics['mIoU']:.2f}")
    assert metrics["mIoU"] >= MIN_MIOU


def test_infer_writes_colour_coded_prediction(trained, tmp_path):
    infer = infer_command
    stem = "synthetic_validation_00003"
    image = trained["root"] / "images/validation" / f"{stem}.jpg"
    out = tmp_path / "pred.png"
    labels = infer.main(
        [
            TINY_CONFIG,
            str(trained["checkpoint"]),
            str(image),
            "--out",
            str(out),
            "--cfg-options",
            *data_options(trained["root"]),
        ]
    )
    png = np.asarray(Image.open(out).convert("RGB"))
    truth = (
        np.asarray(Image.open(trained["root"] / "annotations/validation" / f"{stem}.png")).astype(np.int64)
        - 1
    )
    assert png.shape == (*truth.shape, 3)
    # every pixel is the palette colour of its predicted class
    np.testing.assert_array_equal(png, np.asarray(SYNTHETIC_PALETTE, np.uint8)[labels])
    labelled = truth >= 0
    assert (labels[labelled] == truth[labelled]).mean() > 0.8


def test_tta_and_show_dir(trained, tmp_path):
    test = evaluate_command
    show = tmp_path / "show"
    metrics = test.main(
        [
            TINY_CONFIG,
            str(trained["checkpoint"]),
            "--tta",
            "--show-dir",
            str(show),
            "--work-dir",
            str(tmp_path / "work"),
            "--cfg-options",
            f"test_dataloader.dataset.data_root={trained['root']}",
        ]
    )
    print(f"held-out mIoU with multi-scale + flip: {metrics['mIoU']:.2f}")
    assert metrics["mIoU"] >= MIN_MIOU
    assert len(list(show.rglob("*.png"))) == 16  # one drawing per held-out image
