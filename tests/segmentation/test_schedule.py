"""Segmentation schedules follow the run: a shortened run scales the warm-up and poly start; a resumed run with a
longer max_iters continues on the longer schedule (the same lr as a run planned that long from the start)."""

from __future__ import annotations

import logging

import pytest
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.synthetic import write_synthetic_ade

from .conftest import CONFIG_DIR, TINY_CONFIG, data_options


@HOOKS.register_module(force=True)
class RecordLrHook(Hook):
    """Records the lr of the first parameter group used by each training iteration."""

    lrs: dict = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        RecordLrHook.lrs[runner.iter] = runner.optim_wrapper.param_groups[0]["lr"]


def test_published_configs_keep_absolute_values_and_short_runs_scale(caplog):
    train = train_command
    cfg = train.make_config(train.parse_args([str(CONFIG_DIR / "eva_g_mask2former_ade20k_896.py")]))
    # the authors' ADE20K schedule: warm-up 500, poly counted from 0 to the end of the run (mmengine's end is
    # exclusive of the last value, hence 501 and 20001)
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 501), (0, 20001)]
    with caplog.at_level(logging.WARNING):
        short = train.make_config(
            train.parse_args(
                [str(CONFIG_DIR / "eva_g_mask2former_ade20k_896.py"), "--opts", "train_cfg.max_iters=200"]
            )
        )
    assert short.param_scheduler[0].end == round(501 * 200 / 20000) == 5
    assert short.param_scheduler[1].begin == 0 and short.param_scheduler[1].end == 201
    assert "shorter than the config's 20000" in caplog.text
    explicit = train.make_config(
        train.parse_args(
            [
                TINY_CONFIG,
                "--opts",
                "train_cfg.max_iters=40",
                "param_scheduler.0.end=7",
                "param_scheduler.1.begin=7",
            ]
        )
    )
    assert explicit.param_scheduler[0].end == 7 and explicit.param_scheduler[1].begin == 7


def _run(train, root, work, max_iters, resume=False):
    args = [TINY_CONFIG, "--work-dir", str(work)] + (["--resume"] if resume else [])
    opts = [
        *data_options(root),
        f"train_cfg.max_iters={max_iters}",
        "default_hooks.checkpoint.interval=100",
        "val_dataloader=None",
        "val_cfg=None",
        "val_evaluator=None",
        "train_dataloader.batch_size=1",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "param_scheduler.0.end=2",
        "param_scheduler.1.begin=2",
    ]
    cfg = train.make_config(train.parse_args([*args, "--cfg-options", *opts]))
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type="RecordLrHook")]
    RecordLrHook.lrs = {}
    runner = Runner.from_cfg(cfg)
    runner.train()
    return dict(RecordLrHook.lrs)


def test_resume_with_longer_max_iters_extends_the_schedule(tmp_path, one_thread):
    root = write_synthetic_ade(tmp_path / "data", num_train=2, num_val=1, size=32)
    train = train_command
    planned = _run(train, root, tmp_path / "planned", 8)  # the reference: planned 8 iterations from the start
    first = _run(train, root, tmp_path / "resumed", 4)
    assert first[3] == 0.0  # the poly decay has reached its end (eta_min 0) in the last planned iteration
    resumed = _run(train, root, tmp_path / "resumed", 8, resume=True)
    assert sorted(resumed) == [4, 5, 6, 7]
    for it in range(4, 8):
        assert resumed[it] == pytest.approx(planned[it], rel=1e-6), it
    assert resumed[4] > 0.1 * planned[2]  # not the finished run's final lr (0)
