"""An interrupted run resumes from its last checkpoint at the same iteration with the same weights."""

from __future__ import annotations

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.checkpoint_io import load_local_checkpoint
from eva_transfer_projects.segmentation.synthetic import write_synthetic_ade

from .conftest import TINY_CONFIG, data_options

pytestmark = pytest.mark.slow  # trains for a minute or more (still in the full run)


class SimulatedKill(RuntimeError):
    pass


@HOOKS.register_module(force=True)
class KillAfterIterHook(Hook):
    """Raises after training iteration ``at`` (1-based), like a job killed between checkpoints."""

    def __init__(self, at: int):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise SimulatedKill(f"killed after iteration {self.at}")


@HOOKS.register_module(force=True)
class RecordStartHook(Hook):
    """Records the iteration and a weight when training (re)starts."""

    started = []

    def before_train(self, runner):
        w = runner.model.decode_head.query_feat.weight.detach().clone()
        RecordStartHook.started.append((runner.iter, w))


def _options(root, max_iters):
    return [
        *data_options(root),
        f"train_cfg.max_iters={max_iters}",
        "default_hooks.checkpoint.interval=10",
        "val_dataloader=None",
        "val_cfg=None",
        "val_evaluator=None",
        "train_dataloader.batch_size=2",
    ]


def test_resume_continues_from_last_checkpoint(tmp_path, one_thread):
    root = write_synthetic_ade(tmp_path / "data", num_train=4, num_val=1, size=32)
    work = tmp_path / "work"
    train = train_command
    RecordStartHook.started.clear()
    common = [TINY_CONFIG, "--work-dir", str(work)]
    cfg = train.make_config(train.parse_args([*common, "--cfg-options", *_options(root, 24)]))
    cfg.custom_hooks = [dict(type="KillAfterIterHook", at=13), dict(type="RecordStartHook")]
    with pytest.raises(SimulatedKill):
        Runner.from_cfg(cfg).train()
    assert (work / "iter_10.pth").is_file() and not (work / "iter_20.pth").exists()
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_10.pth")
    assert not list(work.glob(".*.tmp")), "atomic writes leave no temporary files"
    saved = load_local_checkpoint(str(work / "iter_10.pth"))

    cfg = train.make_config(train.parse_args([*common, "--resume", "--cfg-options", *_options(root, 24)]))
    cfg.custom_hooks = [dict(type="RecordStartHook")]
    runner = Runner.from_cfg(cfg)
    runner.train()
    start_iter, start_weight = RecordStartHook.started[-1]
    assert start_iter == 10
    torch.testing.assert_close(start_weight, saved["state_dict"]["decode_head.query_feat.weight"])
    assert runner.iter == 24
    final = load_local_checkpoint(str(work / "iter_24.pth"))
    assert final["meta"]["iter"] == 24
    assert not torch.equal(final["state_dict"]["decode_head.query_feat.weight"], start_weight)
