"""The tiny config learns the synthetic ADE-layout data from scratch; test and inference tools on the result.

The model is the one docs/quickstart.md's segmentation block trains (run once per session by the
``segmentation_quickstart`` fixture of tests/conftest.py): the same config and data, trained once for both."""

from __future__ import annotations

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from eva_transfer_projects.segmentation import evaluate_command, infer_command
from eva_transfer_projects.segmentation.synthetic import SYNTHETIC_PALETTE

from .conftest import TINY_CONFIG, data_options

#: with the quick start's segmentation test, whose session fixture trains the model (one pytest-xdist process)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("segmentation_quickstart")]

#: mIoU (percent) the tiny model must reach on the held-out images
MIN_MIOU = 60.0


@pytest.fixture(scope="module")
def trained(segmentation_quickstart, tmp_path_factory, one_thread):
    """The tiny config as it is (150 iterations) trained on 64 synthetic images, 16 held out: the quick start's
    data (tools/make_synthetic_ade.py's defaults) and the last checkpoint of its tools/train_seg.py run."""
    work = segmentation_quickstart["work"]
    root = work / "data/synthetic_ade"
    assert len(list((root / "images/training").glob("*.jpg"))) == 64
    assert len(list((root / "images/validation").glob("*.jpg"))) == 16
    iters = Config.fromfile(TINY_CONFIG).train_cfg.max_iters
    checkpoint = work / "work_dirs/eva_tiny_mask2former_synthetic" / f"iter_{iters}.pth"
    assert checkpoint.is_file()
    return dict(root=root, work_dir=tmp_path_factory.mktemp("work"), checkpoint=checkpoint, iters=iters)


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
