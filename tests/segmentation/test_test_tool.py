"""tools/test_seg.py --out saves one label PNG per test image; --show turns on the visualization hook's window."""

from __future__ import annotations

import numpy as np
from PIL import Image

from eva_transfer_projects.segmentation import evaluate_command, train_command
from eva_transfer_projects.segmentation.synthetic import write_synthetic_ade

from .conftest import TINY_CONFIG, data_options


def test_out_saves_predictions_and_show_is_configured(tmp_path, one_thread):
    root = write_synthetic_ade(tmp_path / "data", num_train=2, num_val=3, size=32)
    work = tmp_path / "work"
    train = train_command
    opts = [
        *data_options(root),
        "train_cfg.max_iters=2",
        "train_cfg.val_interval=10",
        "train_dataloader.batch_size=1",
    ]
    runner = train.main([TINY_CONFIG, "--output-dir", str(work), "--num-threads", "1", "--opts", *opts])
    checkpoint = work / f"iter_{runner.iter}.pth"
    test = evaluate_command
    out = tmp_path / "preds"
    metrics = test.main(
        [
            TINY_CONFIG,
            str(checkpoint),
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "t"),
            "--opts",
            *data_options(root),
        ]
    )
    assert "mIoU" in metrics
    labels = sorted((root / "annotations/validation").glob("*.png"))
    saved = sorted(out.glob("*.png"))
    assert [p.name for p in saved] == [p.name for p in labels]
    for pred, label in zip(saved, labels):
        pred, label = np.asarray(Image.open(pred)), np.asarray(Image.open(label))
        assert pred.shape == label.shape
        assert pred.min() >= 1 and pred.max() <= 5  # classes 0-4 in the dataset's numbering (0 = ignore)

    args = test.parse_args(
        [TINY_CONFIG, str(checkpoint), "--show", "--wait-time", "0.5", "--opts", *data_options(root)]
    )
    shown = test.build_runner(args)
    vis = shown.cfg.default_hooks.visualization
    assert vis.show is True and vis.draw is True and vis.wait_time == 0.5
