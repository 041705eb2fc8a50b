"""tools/test_seg.py --out saves one label PNG per test image; --show turns on the visualization hook's window.

tools/test_seg.py never scores weights that the checkpoint did not set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eva_transfer.checkpoint_io import CheckpointError
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


@pytest.fixture(scope="module")
def test_seg():
    return evaluate_command


def _args(test_seg, checkpoint, tmp_path, *extra):
    return test_seg.parse_args(
        [TINY_CONFIG, str(checkpoint), "--work-dir", str(tmp_path / "work"), *extra, "--cfg-options"]
        + data_options(tmp_path)
    )


@pytest.fixture(scope="module")
def full_state(tmp_path_factory):
    """The tiny segmentor's complete state dict (what tools/train_seg.py writes under 'state_dict')."""
    tmp = tmp_path_factory.mktemp("full")
    test_seg = evaluate_command
    placeholder = tmp / "placeholder.pth"
    torch.save({"state_dict": {}}, placeholder)
    runner = test_seg.build_runner(_args(test_seg, placeholder, tmp, "--allow-missing-weights"))
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


def test_a_checkpoint_matching_no_key_is_refused(test_seg, tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"state_dict": {"classifier.weight": torch.zeros(3, 3)}, "meta": {}}, path)
    with pytest.raises(CheckpointError, match=r"unrelated\.pth does not set (\d+) of the model's \1 weights"):
        test_seg.main([str(a) for a in _argv(path, tmp_path)])


def _argv(checkpoint, tmp_path, *extra):
    return [
        TINY_CONFIG,
        checkpoint,
        "--work-dir",
        tmp_path / "work",
        *extra,
        "--cfg-options",
        *data_options(tmp_path),
    ]


def test_a_checkpoint_without_the_decode_head_is_refused(test_seg, full_state, tmp_path):
    path = tmp_path / "backbone_only.pth"
    torch.save(
        {"state_dict": {k: v for k, v in full_state.items() if not k.startswith("decode_head.")}}, path
    )
    with pytest.raises(CheckpointError, match=r"backbone_only\.pth does not set \d+ .*decode_head\."):
        test_seg.build_runner(_args(test_seg, path, tmp_path))
    runner = test_seg.build_runner(_args(test_seg, path, tmp_path, "--allow-missing-weights"))
    assert runner.cfg.load_from == str(path)  # the explicit flag evaluates this file anyway


def test_a_weight_of_another_shape_is_refused(test_seg, full_state, tmp_path):
    state = dict(full_state)
    key = next(k for k in state if k.startswith("decode_head.") and state[k].dim() == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    path = tmp_path / "other_shape.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=rf"{key} \(checkpoint \["):
        test_seg.build_runner(_args(test_seg, path, tmp_path))


@pytest.mark.parametrize("tta", [False, True])
def test_a_complete_checkpoint_is_accepted(test_seg, full_state, tmp_path, tta):
    path = tmp_path / "iter_10.pth"
    torch.save(
        {"state_dict": {f"module.{k}" if tta else k: v for k, v in full_state.items()}, "meta": {}}, path
    )
    runner = test_seg.build_runner(_args(test_seg, path, tmp_path, *(["--tta"] if tta else [])))
    assert runner.cfg.load_from == str(path)  # the runner evaluates this file


def test_nan_weights_are_named(test_seg, full_state, tmp_path):
    state = {k: v.clone() for k, v in full_state.items()}
    key = next(k for k in state if k.startswith("decode_head.") and state[k].is_floating_point())
    state[key].view(-1)[0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=rf"nan\.pth: key '{key}' holds 1 NaN"):
        test_seg.build_runner(_args(test_seg, path, tmp_path))
